"""keras_odir.evaluate and torch_odir.evaluate on the real sample photographs with random-weight models
saved as training saves them; probabilities checked against a direct torch forward pass."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.model_selection import train_test_split

from keras_odir.evaluate import main as keras_evaluate
from odir_core.data.splits import save_split
from odir_core.evaluation import plots
from odir_core.evaluation.thresholds import load_thresholds
from odir_core.labels import LABELS
from reference_data import REAL_SAMPLES, needs
from tiny_runs import BACKBONE, CROP_SIZE, HEAD, IMAGE_SIZE, new_run, recording_run, run_config, shared_models
from torch_odir.evaluate import main as torch_evaluate
from torch_odir.model import DualNet

pytestmark = needs(REAL_SAMPLES / "samples.csv")
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


@pytest.fixture
def runs(tmp_path_factory, tmp_path):
    """(prepared folder, keras run's best.keras, torch run's best.pth): same weights, fresh run folders per test."""
    data, keras_model, torch_model = shared_models(tmp_path_factory)
    config = run_config(data)
    return data, new_run(tmp_path / "krun", keras_model, config), new_run(tmp_path / "trun", torch_model, config)


def _reference_input(path: Path) -> np.ndarray:
    """Validation input built here from the file: area resize 282 -> IMAGE_SIZE, centre crop, ImageNet normalisation."""
    img = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    img = cv2.resize(img, (IMAGE_SIZE, IMAGE_SIZE), interpolation=cv2.INTER_AREA)
    top = (IMAGE_SIZE - CROP_SIZE) // 2
    img = img[top : top + CROP_SIZE, top : top + CROP_SIZE]
    return ((img / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)


def _reference_probs(torch_model: Path, ids, tta_hflip: bool) -> np.ndarray:
    model = DualNet(BACKBONE, head=HEAD)
    model.load_state_dict(torch.load(torch_model, weights_only=True)["state_dict"])
    model.eval()
    left = np.stack([_reference_input(REAL_SAMPLES / f"{i}_left.png") for i in ids])
    right = np.stack([_reference_input(REAL_SAMPLES / f"{i}_right.png") for i in ids])

    def run(lft, rgt):
        to = lambda x: torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))  # noqa: E731
        with torch.no_grad():
            return torch.sigmoid(model(to(lft), to(rgt))).double().numpy()

    probs = run(left, right)
    if tta_hflip:  # mirrored right eye as the left eye and vice versa
        probs = (probs + run(right[:, :, ::-1], left[:, :, ::-1])) / 2
    return probs


def test_val_split_with_tta_and_tuned_thresholds_both_frameworks(runs, tmp_path):
    data, keras_model, torch_model = runs
    for main, model, name in ((keras_evaluate, keras_model, "k"), (torch_evaluate, torch_model, "t")):
        rc = main(["--model", str(model), "--split", "val", "--tta", "hflip", "--tune-thresholds",
                   "--threshold-metric", "kappa", "--out", str(tmp_path / name), "--batch-size", "3"])
        assert rc == 0
        assert (model.parent / "thresholds.json").is_file()
    # the study's split rule applied here directly: sklearn train_test_split(test_size=0.2, random_state=42)
    samples = pd.read_csv(REAL_SAMPLES / "samples.csv")
    _, val = train_test_split(samples, test_size=0.2, random_state=42)
    expected = _reference_probs(torch_model, val["ID"].tolist(), tta_hflip=True)
    for name in ("k", "t"):
        probs = pd.read_excel(tmp_path / name / "probs.xlsx")
        assert probs["ID"].tolist() == val["ID"].tolist()
        np.testing.assert_allclose(probs[list(LABELS)].to_numpy(), expected, atol=2e-4)
        truth = pd.read_excel(tmp_path / name / "ground_truth.xlsx")
        np.testing.assert_array_equal(truth[list(LABELS)].to_numpy(), val[list(LABELS)].to_numpy())
        summary = json.loads((tmp_path / name / "metrics.json").read_text())
        assert set(summary["study"]) == {"at_0.5", "at_tuned"}
        assert summary["info"]["TTA"] == "hflip"
        assert (tmp_path / name / "qualitative.png").is_file()
    tuned = load_thresholds(torch_model.parent / "thresholds.json")
    assert summary["thresholds"]["at_tuned"] == dict(zip(LABELS, tuned.tolist()))


def test_all_patients_default_folder_never_overwritten(runs):
    data, _, torch_model = runs
    for _ in range(2):
        assert torch_evaluate(["--model", str(torch_model), "--split", "all"]) == 0
    first, second = torch_model.parent / "eval-all", torch_model.parent / "eval-all-2"
    truth = pd.read_excel(first / "ground_truth.xlsx")
    samples = pd.read_csv(REAL_SAMPLES / "samples.csv")
    assert truth["ID"].tolist() == samples["ID"].tolist()
    np.testing.assert_array_equal(truth[list(LABELS)].to_numpy(), samples[list(LABELS)].to_numpy())
    pd.testing.assert_frame_equal(pd.read_excel(first / "probs.xlsx"), pd.read_excel(second / "probs.xlsx"))


def test_missing_image_is_one_clear_error(runs, tmp_path, capsys):
    data, keras_model, _ = runs
    broken = tmp_path / "data"
    shutil.copytree(data, broken)
    (broken / "images" / "2041_right.png").unlink()
    rc = keras_evaluate(["--model", str(keras_model), "--data", str(broken), "--split", "all", "--out", str(tmp_path / "ev")])
    err = capsys.readouterr().err
    assert rc == 2 and "2041_right.png" in err and "Traceback" not in err
    assert not (tmp_path / "ev").exists()


@pytest.mark.parametrize("case", ["missing", "no_config", "wrong_suffix", "damaged_keras", "damaged_pth"])
def test_bad_model_is_one_clear_error(runs, tmp_path, capsys, case):
    _, keras_model, torch_model = runs
    evaluate = keras_evaluate
    if case == "missing":
        model, expect = tmp_path / "best.keras", "model file not found"
    elif case == "no_config":
        model, expect = tmp_path / "best.keras", "config.toml"
        model.write_bytes(b"not a model")
    elif case == "wrong_suffix":
        model, expect = keras_model.parent / "model.h5", "loads .keras/.pth/.pt/.onnx files"
        model.write_bytes(b"not a model")
    else:  # a damaged file in a run folder
        suffix = ".keras" if case == "damaged_keras" else ".pth"
        model = keras_model.parent / f"damaged{suffix}"  # beside the run's config.toml
        model.write_bytes(np.random.default_rng(0).bytes(5000))
        evaluate = keras_evaluate if suffix == ".keras" else torch_evaluate
        expect = "not a .keras model" if suffix == ".keras" else "not a readable PyTorch checkpoint"
    rc = evaluate(["--model", str(model), "--out", str(tmp_path / "ev")])
    err = capsys.readouterr().err
    assert rc == 2 and expect in err and "Traceback" not in err


def test_test_split_with_thresholds_tuned_on_val(runs, tmp_path):
    data, _, torch_model = runs
    ids = pd.read_csv(REAL_SAMPLES / "samples.csv")["ID"].tolist()
    save_split(tmp_path / "split.json", ids[:13], ids[13:18], ids[18:])
    model = new_run(tmp_path / "run", torch_model, run_config(data).replace(split=str(tmp_path / "split.json")))
    assert torch_evaluate(["--model", str(model), "--split", "test", "--tune-thresholds", "--out", str(tmp_path / "ev")]) == 0
    probs = pd.read_excel(tmp_path / "ev" / "probs.xlsx")
    assert probs["ID"].tolist() == ids[18:]
    np.testing.assert_allclose(probs[list(LABELS)].to_numpy(), _reference_probs(torch_model, ids[18:], tta_hflip=False), atol=1e-4)
    saved = json.loads((model.parent / "thresholds.json").read_text())
    assert saved["n_patients"] == 5 and "val split" in saved["source"]  # tuned on the 5 validation patients


def test_probs_file_with_labels_and_images_from_a_prepared_folder(runs, tmp_path):
    data, _, _ = runs
    samples = pd.read_csv(REAL_SAMPLES / "samples.csv")
    rng = np.random.default_rng(1)
    probs = samples[["ID", *LABELS]].copy()
    probs[list(LABELS)] = rng.random((len(samples), len(LABELS)))
    probs.to_csv(tmp_path / "mine.csv", index=False)
    assert keras_evaluate(["--probs", str(tmp_path / "mine.csv"), "--data", str(data), "--out", str(tmp_path / "ev")]) == 0
    truth = pd.read_excel(tmp_path / "ev" / "ground_truth.xlsx")
    np.testing.assert_array_equal(truth[list(LABELS)].to_numpy(), samples[list(LABELS)].to_numpy())
    assert (tmp_path / "ev" / "qualitative.png").is_file()


def test_evaluation_says_what_the_model_was_trained_on(runs, tmp_path, capsys, monkeypatch):
    _, keras_model, _ = runs
    record = {"data": "/data/synthetic/demo_300_128_0", "synthetic": True, "run": "/runs/demo-1", "experiment": "demo",
              "epoch": 3}
    model = recording_run(tmp_path / "run", keras_model.resolve(), record)
    captions = []
    original = plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, **kw: captions.append(kw.get("caption")) or original(fig, path, **kw))
    assert keras_evaluate(["--model", str(model), "--split", "all", "--out", str(tmp_path / "ev")]) == 0
    note = ("trained on synthetic demo data, not for real photographs (/data/synthetic/demo_300_128_0; run /runs/demo-1, "
            "experiment demo, epoch 3)")
    assert f"model {note}" in capsys.readouterr().err.splitlines()
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["info"]["trained on"] == note
    assert note in (tmp_path / "ev" / "report.html").read_text()
    assert captions == [f"model {note}"] * 4  # confusion matrices, ROC, PR, qualitative
