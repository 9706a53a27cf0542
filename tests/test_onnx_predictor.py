"""An exported .onnx model in predict and evaluate (odir_core.evaluation.onnx_predictor): the same probabilities as
the .keras it was exported from on the real sample photographs, config / thresholds / provenance from its metadata
or from files beside it, Grad-CAM refused, and no deep-learning framework imported on that path."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from export_runs import THRESHOLDS, shared_onnx_export

from keras_odir.cli_backend import BACKEND as KERAS
from keras_odir.evaluate import main as keras_evaluate
from keras_odir.predict import main as keras_predict
from odir_core.evaluation.inference import InferenceError, load_model, model_config, model_input, predict_batch, prepare_photo
from odir_core.evaluation.predict import choose_thresholds
from odir_core.evaluation.reports import AT_TUNED
from odir_core.evaluation.thresholds import save_thresholds
from odir_core.labels import LABELS
from odir_core.training.config_files import load_config, save_config
from reference_data import REAL_SAMPLES, needs
from torch_odir.cli_backend import BACKEND as TORCH

REPO = Path(__file__).resolve().parents[1]
pytestmark = needs(REAL_SAMPLES / "samples.csv")
RAW = [str(REAL_SAMPLES / "raw" / name) for name in ("raw_0.png", "raw_2.png")]
PROB_LINE = re.compile(r"^([NDGCAHMO]) .*?\s(\d\.\d{4})\s+(\d\.\d\d)", re.M)
BLOCKED = ("torch", "keras", "jax", "tensorflow", "torchvision")
BLOCKER = f"""
import atexit, os, sys
BLOCKED = {BLOCKED!r}


class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, Blocker())
atexit.register(lambda: open(os.environ["LOADED_REPORT"], "w").write(
    " ".join(m for m in sys.modules if m.partition(".")[0] in BLOCKED)))
"""


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """(best.keras in its run folder, the .onnx exported from it alone in another folder, the data folder)."""
    return shared_onnx_export(tmp_path_factory)


def _probs(model, tta="both") -> np.ndarray:
    left, right = [np.stack([model_input(prepare_photo(p, model.config), model.config) for p in pair])
                   for pair in zip(*[RAW, RAW[::-1]])]  # two patients: (raw_0, raw_2), (raw_2, raw_0)
    return predict_batch(model.predictor, left, right, tta)


def _printed(text: str) -> tuple[np.ndarray, np.ndarray]:
    rows = PROB_LINE.findall(text)
    assert [label for label, _, _ in rows] == list(LABELS), text
    return np.array([float(p) for _, p, _ in rows]), np.array([float(t) for _, _, t in rows])


def test_onnx_predicts_as_the_keras_model_with_its_recorded_settings(models):
    keras_model, onnx_model, _ = models
    source = load_model(KERAS, keras_model)
    for backend in (KERAS, TORCH):  # every backend loads an .onnx
        exported = load_model(backend, onnx_model)
        assert exported.config == source.config  # recorded: no config.toml beside it
        np.testing.assert_allclose(exported.embedded_thresholds, THRESHOLDS)
        assert exported.trained_on == source.trained_on and exported.trained_on["experiment"] == "export-test"
        np.testing.assert_allclose(_probs(exported), _probs(source), atol=1e-5)


def test_predict_cli_on_onnx_prints_the_keras_prediction_and_recorded_thresholds(models, capsys):
    keras_model, onnx_model, _ = models
    assert keras_predict(["--model", str(keras_model), *RAW, "--tta", "hflip"]) == 0
    keras_out = capsys.readouterr().out
    assert keras_predict(["--model", str(onnx_model), *RAW, "--tta", "hflip"]) == 0
    onnx_out = capsys.readouterr().out
    assert f"thresholds: recorded in {onnx_model}" in onnx_out and "export-test" in onnx_out
    np.testing.assert_allclose(_printed(onnx_out)[0], _printed(keras_out)[0], atol=1.5e-4)
    np.testing.assert_allclose(_printed(onnx_out)[1], THRESHOLDS)
    np.testing.assert_allclose(_printed(keras_out)[1], THRESHOLDS)  # its thresholds.json


def test_files_beside_the_onnx_and_train_config_win_over_its_metadata(models, tmp_path):
    keras_model, onnx_model, data = models
    folder = tmp_path / "run"
    folder.mkdir()
    model = folder / "model.onnx"
    shutil.copy(onnx_model, model)
    recorded = load_config(keras_model.parent / "config.toml")
    save_config(replace(recorded, data="beside"), folder / "config.toml")
    assert model_config(KERAS, model).data == "beside"
    given = tmp_path / "given.toml"
    save_config(replace(recorded, data="given"), given)
    assert model_config(KERAS, model, given).data == "given"
    save_thresholds(folder / "thresholds.json", 0.25, metric="f1", source="beside", n_patients=3)
    loaded = load_model(KERAS, model)
    thresholds, text, _ = choose_thresholds(SimpleNamespace(thresholds=None), [loaded])
    np.testing.assert_allclose(thresholds, 0.25)
    assert "found beside the model" in text
    save_config(replace(recorded, crop_size=0), folder / "config.toml")  # 64 px, not 56
    with pytest.raises(InferenceError, match="takes 56 x 56 inputs, got \\(64, 64\\)"):
        _probs(load_model(KERAS, model))


def _one_line(capsys, argv) -> str:
    assert keras_predict(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_gradcam_and_bad_onnx_files_are_one_line(models, tmp_path, capsys):
    _, onnx_model, _ = models
    err = _one_line(capsys, ["--model", str(onnx_model), *RAW, "--gradcam", "--out", str(tmp_path / "f.png")])
    assert "Grad-CAM needs the model's weights: pass the .keras/.pth it was exported from (best.keras)" in err
    assert not (tmp_path / "f.png").exists()
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not onnx")
    assert "not a usable ONNX model" in _one_line(capsys, ["--model", str(broken), *RAW])
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), tmp_path / "foreign.onnx")
    assert "not a keras_odir export" in _one_line(capsys, ["--model", str(tmp_path / "foreign.onnx"), *RAW])


def _blocked(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m`` ``args`` with torch, keras, jax, tensorflow and torchvision unimportable; asserts none was
    imported."""
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    report = tmp_path / "loaded.txt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO), os.environ.get("PYTHONPATH", "")]),
           "LOADED_REPORT": str(report)}
    done = subprocess.run([sys.executable, "-m", *args], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert report.read_text() == ""
    return done


def test_predict_and_evaluate_on_onnx_without_any_framework(models, tmp_path, capsys):
    keras_model, onnx_model, data = models
    done = _blocked(tmp_path, "keras_odir.predict", "--model", str(onnx_model), *RAW)
    probs = _printed(done.stdout)[0]
    np.testing.assert_allclose(probs, _probs(load_model(KERAS, keras_model), tta="none")[0], atol=1.5e-4)
    _blocked(tmp_path, "torch_odir.evaluate", "--model", str(onnx_model), "--data", str(data), "--split", "all",
             "--out", str(tmp_path / "ev_onnx"))
    assert keras_evaluate(["--model", str(keras_model), "--split", "all", "--out", str(tmp_path / "ev_keras")]) == 0
    capsys.readouterr()
    found, expected = (pd.read_excel(tmp_path / name / "probs.xlsx") for name in ("ev_onnx", "ev_keras"))
    assert list(found["ID"]) == list(expected["ID"]) and len(found) > 5
    np.testing.assert_allclose(found[list(LABELS)].to_numpy(), expected[list(LABELS)].to_numpy(), atol=1e-5)
    # the thresholds the .onnx records are applied as the .keras's thresholds.json is
    onnx_thresholds, keras_thresholds = (json.loads((tmp_path / name / "metrics.json").read_text())["thresholds"]
                                         for name in ("ev_onnx", "ev_keras"))
    assert onnx_thresholds == keras_thresholds and onnx_thresholds[AT_TUNED] == dict(zip(LABELS, THRESHOLDS.tolist()))
