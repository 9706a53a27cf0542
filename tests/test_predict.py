"""keras_odir.predict and torch_odir.predict on real photographs with random-weight models (same weights in
both frameworks): printed probabilities, Grad-CAM on every Keras backend vs torch hooks, batch CSV, bad images."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from fundus_images import landscape_image, noise_image, zero_middle_of_scan

from keras_odir.cli_backend import BACKEND as KERAS
from keras_odir.predict import main as keras_predict
from odir_core.evaluation import plots
from odir_core.evaluation.inference import load_model, model_input, prepare_photo
from odir_core.evaluation.thresholds import save_thresholds
from odir_core.labels import LABELS
from reference_data import REAL_SAMPLES, needs
from tiny_runs import new_run, recording_run, run_config, shared_models
from torch_odir.cli_backend import BACKEND as TORCH
from torch_odir.predict import main as torch_predict
import warm_processes

REPO = Path(__file__).resolve().parents[1]
pytestmark = needs(REAL_SAMPLES / "samples.csv")
RAW = REAL_SAMPLES / "raw"
PROB_LINE = re.compile(r"^([NDGCAHMO]) .*?\s(\d\.\d{4})\s+(\d\.\d\d)", re.M)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(keras run's best.keras, torch run's best.pth) with the same random weights."""
    data, keras_model, torch_model = shared_models(tmp_path_factory)
    root = tmp_path_factory.mktemp("predict_runs")
    config = run_config(data)
    return new_run(root / "keras", keras_model, config), new_run(root / "torch", torch_model, config)


def _printed_probs(text: str) -> np.ndarray:
    found = dict((label, float(p)) for label, p, _ in PROB_LINE.findall(text))
    assert list(found) == list(LABELS), text
    return np.array([found[label] for label in LABELS])


def _inputs(model, left, right):
    return [model_input(prepare_photo(p, model.config), model.config)[None] for p in (left, right)]


def test_raw_photographs_same_prediction_in_both_frameworks(runs, tmp_path, capsys):
    keras_model, torch_model = runs
    photos = [str(RAW / "raw_0.png"), str(RAW / "raw_2.png")]
    assert keras_predict(["--model", str(keras_model), *photos, "--tta", "both"]) == 0
    keras_out = capsys.readouterr().out
    assert torch_predict(["--model", str(torch_model), *photos, "--tta", "both"]) == 0
    torch_out = capsys.readouterr().out
    assert "A Age-related macular degeneration" in keras_out and "predicted:" in keras_out
    np.testing.assert_allclose(_printed_probs(keras_out), _printed_probs(torch_out), atol=2e-4)
    # the printed numbers are the TTA average of what the torch model gives on the four views
    model = load_model(TORCH, torch_model)
    left, right = _inputs(model, *photos)
    views = [(left, right), (right[:, :, ::-1], left[:, :, ::-1]), (left[:, ::-1], right[:, ::-1]),
             (right[:, ::-1, ::-1], left[:, ::-1, ::-1])]
    expected = np.mean([model.predictor.predict(np.ascontiguousarray(a), np.ascontiguousarray(b))[0] for a, b in views], axis=0)
    np.testing.assert_allclose(_printed_probs(torch_out), expected, atol=1e-4)


GRADCAM_SCRIPT = """
import sys, numpy as np, keras
from keras_odir.cli_backend import BACKEND
from odir_core.evaluation.inference import load_model, model_input, prepare_photo
assert keras.backend.backend() == sys.argv[1], keras.backend.backend()
model = load_model(BACKEND, sys.argv[2])
left, right = [model_input(prepare_photo(p, model.config), model.config)[None] for p in sys.argv[3:5]]
np.save(sys.argv[6], np.stack(model.predictor.gradcam(left, right, int(sys.argv[5]))))
"""


@pytest.mark.parametrize("backend", ["torch", "jax", "tensorflow"])
def test_gradcam_on_every_keras_backend_matches_torch_hooks(runs, tmp_path, backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    keras_model, torch_model = runs
    photos = [str(REAL_SAMPLES / "1539_left.png"), str(REAL_SAMPLES / "1539_right.png")]
    label = LABELS.index("M")
    torch_side = load_model(TORCH, torch_model)
    expected = np.stack(torch_side.predictor.gradcam(*_inputs(torch_side, *photos), label))
    assert expected.shape == (2, 7, 7) and expected.max() == pytest.approx(1.0)  # layer2: layer4 is 2x2 at 56 px
    if backend == "torch":  # this process's Keras backend
        keras_side = load_model(KERAS, keras_model)
        maps = np.stack(keras_side.predictor.gradcam(*_inputs(keras_side, *photos), label))
    else:
        out = tmp_path / "maps.npy"
        env = {**os.environ, "KERAS_BACKEND": backend}
        done = subprocess.run([sys.executable, "-c", GRADCAM_SCRIPT, backend, str(keras_model), *photos, str(label), str(out)],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        maps = np.load(out)
    np.testing.assert_allclose(maps, expected, atol=1e-3)


def test_figure_with_gradcam_and_no_overwrite(runs, tmp_path, capsys):
    keras_model, _ = runs
    fig = tmp_path / "fig.png"
    args = ["--model", str(keras_model), str(RAW / "raw_0.png"), str(RAW / "raw_1.png"), "--out", str(fig), "--gradcam"]
    assert keras_predict(args) == 0
    img = cv2.imread(str(fig))
    assert img is not None and img.shape[1] > 1000 and img.std() > 10
    capsys.readouterr()
    assert keras_predict(args) == 2
    assert "already exists" in capsys.readouterr().err


def _black(path: Path) -> Path:
    cv2.imwrite(str(path), np.zeros((200, 240, 3), np.uint8))
    return path


@pytest.mark.parametrize("case, expect", [("black", "is black"), ("nearly_black", "nearly black"), ("missing", "not found"),
                                          ("corrupt", "corrupt.png"), ("noise", "not a fundus photograph: no dark surround"),
                                          ("landscape", "not a fundus photograph: no dark surround"),
                                          ("white", "image is blank (all white)"),
                                          ("damaged_jpeg", "corrupt JPEG (libjpeg: Corrupt JPEG data")])
def test_bad_image_exits_2_with_one_line(runs, tmp_path, capsys, case, expect):
    _, torch_model = runs
    bad = tmp_path / (f"{case}.jpg" if case == "damaged_jpeg" else f"{case}.png")
    if case in ("noise", "landscape", "white"):
        img = {"noise": noise_image(), "landscape": landscape_image(), "white": np.full((200, 240, 3), 255, np.uint8)}[case]
        cv2.imwrite(str(bad), img[:, :, ::-1])
    elif case == "damaged_jpeg":
        photo = cv2.resize(cv2.imread(str(RAW / "raw_2.png")), (900, 888), interpolation=cv2.INTER_CUBIC)
        bad.write_bytes(zero_middle_of_scan(cv2.imencode(".jpg", photo, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()))
    elif case == "black":
        _black(bad)
    elif case == "nearly_black":
        img = np.zeros((200, 240, 3), np.uint8)
        img[100:104, 120:124] = 200  # a few bright pixels: no fundus
        cv2.imwrite(str(bad), img)
    elif case == "corrupt":
        bad.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(300))
    rc = torch_predict(["--model", str(torch_model), str(bad), str(RAW / "raw_1.png")])
    err = capsys.readouterr().err
    assert rc == 2
    assert expect in err and str(bad.name) in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_black_image_via_the_command_line(runs, tmp_path):
    keras_model, _ = runs
    black = _black(tmp_path / "black.png")
    done = warm_processes.run([sys.executable, "-m", "keras_odir.predict", "--model", str(keras_model), str(black),
                               str(black)], cwd=REPO, timeout=300)
    assert done.returncode == 2
    assert "black.png" in done.stderr and "is black" in done.stderr and "Traceback" not in done.stderr


def test_noise_image_via_the_command_line_exits_2(runs, tmp_path):
    keras_model, _ = runs
    noise = tmp_path / "noise.png"
    cv2.imwrite(str(noise), noise_image())
    done = warm_processes.run([sys.executable, "-m", "keras_odir.predict", "--model", str(keras_model), str(noise),
                               str(RAW / "raw_1.png")], cwd=REPO, timeout=300)
    assert done.returncode == 2, done.stdout
    assert "noise.png: not a fundus photograph" in done.stderr and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "predicted" not in done.stdout


def test_batch_csv_skips_and_reports_bad_rows(runs, tmp_path, capsys):
    _, torch_model = runs
    _black(tmp_path / "black.png")
    pd.DataFrame({
        "id": ["p1539", "pblack", "p32"],
        "left": [str(REAL_SAMPLES / "1539_left.png"), "black.png", str(REAL_SAMPLES / "32_left.png")],
        "right": [str(REAL_SAMPLES / "1539_right.png"), str(REAL_SAMPLES / "32_right.png"), str(REAL_SAMPLES / "32_right.png")],
    }).to_csv(tmp_path / "patients.csv", index=False)
    rc = torch_predict(["--model", str(torch_model), "--batch", str(tmp_path / "patients.csv"), "--batch-size", "2"])
    captured = capsys.readouterr()
    assert rc == 1
    assert "2 of 3 patients predicted" in captured.out and "id pblack" in captured.err
    result = pd.read_csv(tmp_path / "patients_predictions.csv", keep_default_na=False)
    assert result["id"].tolist() == ["p1539", "pblack", "p32"]
    assert result.loc[0, "error"] == "" and "black" in result.loc[1, "error"]
    model = load_model(TORCH, torch_model)
    for row, pid in ((0, 1539), (2, 32)):
        left, right = _inputs(model, REAL_SAMPLES / f"{pid}_left.png", REAL_SAMPLES / f"{pid}_right.png")
        expected = model.predictor.predict(left, right)[0]
        np.testing.assert_allclose(result.loc[row, list(LABELS)].astype(float), expected, atol=1e-5)


SYNTHETIC = {"data": "/data/synthetic/demo_300_128_0", "synthetic": True, "run": "/runs/demo-1", "experiment": "demo",
             "epoch": 3}
PREPARED = {"data": "/data/odir5k", "synthetic": False, "run": "/runs/experiment_15-1", "experiment": "experiment_15",
            "epoch": 42}


@pytest.mark.parametrize("which, record, expect", [
    ("keras", SYNTHETIC, "trained on synthetic demo data, not for real photographs (/data/synthetic/demo_300_128_0; "
                         "run /runs/demo-1, experiment demo, epoch 3)"),
    ("torch", PREPARED, "trained on /data/odir5k (run /runs/experiment_15-1, experiment experiment_15, epoch 42)"),
    ("torch", None, "training data unknown: the model file does not record it"),
])
def test_prediction_says_what_the_model_was_trained_on(runs, tmp_path, capsys, monkeypatch, which, record, expect):
    keras_model, torch_model = runs
    shared = keras_model if which == "keras" else torch_model
    model = recording_run(tmp_path / "run", shared, record) if record else shared
    captions = []
    original = plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, **kw: captions.append(kw.get("caption")) or original(fig, path, **kw))
    main = keras_predict if which == "keras" else torch_predict
    photos = [str(REAL_SAMPLES / "1539_left.png"), str(REAL_SAMPLES / "1539_right.png")]
    assert main(["--model", str(model), *photos, "--out", str(tmp_path / "fig.png")]) == 0
    out = capsys.readouterr().out
    assert f"model {model}: {expect}" in out.splitlines()
    assert captions == [f"model {expect}"] and (tmp_path / "fig.png").is_file()


def test_prediction_says_which_thresholds_and_warns_when_tuned_on_the_runs_own_patients(runs, tmp_path, capsys):
    keras_model, _ = runs
    model = recording_run(tmp_path / "run", keras_model, SYNTHETIC)
    photos = [str(REAL_SAMPLES / "1539_left.png"), str(REAL_SAMPLES / "1539_right.png")]
    assert keras_predict(["--model", str(model), *photos]) == 0
    captured = capsys.readouterr()
    assert ("thresholds: 0.5 for every label (default: no --thresholds given and no thresholds.json beside the model)"
            in captured.out.splitlines())
    assert "warning" not in captured.err

    tuned = [0.3, 0.6, 0.2, 0.7, 0.4, 0.35, 0.65, 0.45]
    save_thresholds(model.parent / "thresholds.json", tuned, metric="f1", source="val split (study) of /data/x, TTA none",
                    n_patients=5)
    assert keras_predict(["--model", str(model), *photos]) == 0
    captured = capsys.readouterr()
    assert (f"thresholds: {model.parent / 'thresholds.json'} (found beside the model; per-label f1 tuned on val split "
            "(study) of /data/x, TTA none, 5 patients)") in captured.out.splitlines()
    assert [f"{t:.2f}" for t in tuned] == [t for _, _, t in PROB_LINE.findall(captured.out)]  # the table applies them
    assert captured.err.startswith(f"warning: {model.parent / 'thresholds.json'} was tuned on the 5 validation "
                                   "patients of this model's own run")

    other = save_thresholds(tmp_path / "other.json", [0.5] * 8, metric="kappa", source="val split (study) of /data/y, TTA none",
                            n_patients=9)
    assert keras_predict(["--model", str(model), *photos, "--thresholds", str(other)]) == 0
    captured = capsys.readouterr()
    assert f"thresholds: {other} (given with --thresholds; per-label kappa tuned on val split" in captured.out
    assert "warning" not in captured.err  # another run's validation patients


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("which", ["keras", "torch"])
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_unavailable_device_is_one_line(runs, capsys, which, command):
    """Evaluate and predict take --device as training does: an unavailable one is refused, never replaced."""
    model = runs[0] if which == "keras" else runs[1]
    main = importlib.import_module(f"{which}_odir.{command}").main
    photos = [str(RAW / "raw_0.png"), str(RAW / "raw_2.png")] if command == "predict" else []
    assert main(["--model", str(model), *photos, "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("--device cuda: no CUDA device is available; use --device cpu or auto")
