"""The serve command's web page in headless Chromium: two real photographs uploaded (a file input, a drop),
the result shows predict's probabilities for the 8 labels, the thresholds and decisions, the Grad-CAM overlays,
the research-use notice and the model's training-data record.

``ODIR_SERVE_SCREENSHOT=docs/serve.png`` also saves the page as that PNG (README shows it)."""

from __future__ import annotations

import base64
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from keras_odir.cli_backend import BACKEND as KERAS
from odir_core.evaluation.inference import load_model, model_input, predict_batch, prepare_photo
from odir_core.labels import LABELS
from odir_core.model.provenance import SYNTHETIC_NOTE
from reference_data import REAL_SAMPLES, needs
from serve_helpers import running_server
from tiny_runs import recording_run, shared_models

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
SCREENSHOT = os.environ.get("ODIR_SERVE_SCREENSHOT")
PAIR = (REAL_SAMPLES / "188_left.png", REAL_SAMPLES / "188_right.png")
pytestmark = [
    needs(PAIR[0]),
    pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no headless Chromium at {CHROMIUM} (apt-get install chromium)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None,
                       reason="playwright is not installed (pip install -e \".[dev]\")"),
]


# a DataTransfer holding one file, as a drag from the file manager brings it
DROPPED_FILE = """([name, data]) => {
    const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
    const transfer = new DataTransfer();
    transfer.items.add(new File([bytes], name, {type: "image/png"}));
    return transfer;
}"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(base URL, model path) of a keras_odir server of the tiny .keras model recorded as trained on the demo set."""
    data, keras_model, _ = shared_models(tmp_path_factory)
    record = {"data": str(data), "synthetic": True, "run": "runs/demo-1", "experiment": "demo", "epoch": 8}
    model = recording_run(tmp_path_factory.mktemp("page") / "run", keras_model, record)
    with running_server(KERAS, ["--model", str(model)]) as url:
        yield url, model


def test_page_uploads_two_photographs_and_shows_the_prediction(served, tmp_path):
    from playwright.sync_api import sync_playwright

    url, model_path = served
    model = load_model(KERAS, model_path)
    inputs = [model_input(prepare_photo(p, model.config), model.config)[None] for p in PAIR]
    expected = predict_batch(model.predictor, *inputs)[0]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1000, "height": 900})
        try:
            page = browser.new_page()
            page.goto(url)
            page.wait_for_function("document.getElementById('training-data').textContent.length > 0")
            page.set_input_files("#left", str(PAIR[0]))
            dropped = page.evaluate_handle(DROPPED_FILE, [PAIR[1].name, base64.b64encode(PAIR[1].read_bytes()).decode()])
            page.dispatch_event("#drop-right", "drop", {"dataTransfer": dropped})  # the right eye dragged and dropped
            page.check("#gradcam")
            page.click("#submit")
            page.wait_for_selector("#result", state="visible", timeout=60_000)
            page.wait_for_function("document.getElementById('cam-right').complete")
            rows = page.locator("#labels tbody tr")
            shown = {rows.nth(i).get_attribute("data-label"): rows.nth(i).locator("td.prob").inner_text()
                     for i in range(rows.count())}
            notice = page.locator(".notice").first.inner_text()
            training = page.locator("#training-data").inner_text()
            result_note = page.locator("#result-training").inner_text()
            cams = [page.locator(f"#cam-{side}").evaluate("img => img.naturalWidth") for side in ("left", "right")]
            error_hidden = page.locator("#error").is_hidden()
            names = [page.locator(f"#name-{side}").inner_text() for side in ("left", "right")]
            if SCREENSHOT:
                page.screenshot(path=SCREENSHOT, full_page=True)
        finally:
            browser.close()
    assert list(shown) == list(LABELS)
    np.testing.assert_allclose([float(shown[label]) for label in LABELS], expected, rtol=0, atol=5.1e-5)
    assert notice == "For research use only, not a medical device." and error_hidden
    assert training.startswith(SYNTHETIC_NOTE) and "experiment demo, epoch 8" in training
    assert result_note.startswith(f"Model {SYNTHETIC_NOTE}")
    assert cams == [224, 224]
    assert [name.split(" (")[0] for name in names] == [PAIR[0].name, PAIR[1].name]
