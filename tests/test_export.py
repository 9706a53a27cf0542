"""keras_odir.export: each format written, read back with its own runtime and compared with the source Keras model
(a map head too); the metadata; bad input refused with one line and nothing left at OUT. Every registered backbone
to every format: test_export_backbones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from export_runs import THRESHOLDS, keras_logits, keras_run, pairs

from keras_odir import export_formats
from keras_odir.export import export, main
from odir_core.evaluation import export_metadata
from odir_core.labels import LABELS
from odir_core.training.config_files import load_config

REPO = Path(__file__).resolve().parents[1]
SIZE = 32


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A resnet18 + v2 run folder (32 px inputs) with thresholds.json and a provenance record."""
    return keras_run(tmp_path_factory.mktemp("export") / "run", "resnet18", "v2", SIZE)


@pytest.fixture(scope="module")
def onnx_file(run):
    out = run.parent.parent / "exported" / "model.onnx"
    out.parent.mkdir()
    diff, tol = export(run, out, "onnx")
    assert diff <= tol == pytest.approx(1e-4 * max(1.0, np.abs(keras_logits(run, pairs(SIZE, 3, 0))).max()))
    return out


def test_onnx_runs_in_onnxruntime_as_the_keras_model_with_its_metadata(run, onnx_file):
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape[1:], i.type) for i in session.get_inputs()] == \
        [(name, [SIZE, SIZE, 3], "tensor(float)") for name in ("left", "right")]
    assert [o.name for o in session.get_outputs()] == ["probabilities", "logits"]
    for batch in (1, 5):  # neither is the traced batch (2) nor the checked one (3)
        inputs = pairs(SIZE, batch, seed=10 + batch)
        probabilities, logits = session.run(None, inputs)
        reference = keras_logits(run, inputs)
        np.testing.assert_allclose(logits, reference, atol=1e-5)
        np.testing.assert_allclose(probabilities, _sigmoid(reference), atol=1e-6)
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["odir.format"] == "1" and meta["odir.source"] == "best.keras"
    assert json.loads(meta["odir.labels"]) == list(LABELS)
    assert json.loads(meta["odir.architecture"]) == {"backbone": "resnet18", "head": "v2"}
    assert json.loads(meta["odir.thresholds"]) == dict(zip(LABELS, THRESHOLDS.tolist()))
    record = json.loads(meta["odir.trained_on"])
    assert record["experiment"] == "export-test" and record["epoch"] == 3 and record["synthetic"] is True
    assert export_metadata.config(meta, onnx_file) == load_config(run.parent / "config.toml")


def test_onnx_export_of_a_map_head(tmp_path):
    model = keras_run(tmp_path / "run", "resnet18", "scm", SIZE, extras=False)
    out = tmp_path / "scm.onnx"
    assert main([str(model), str(out), "--format", "onnx"]) == 0
    inputs = pairs(SIZE, 3, seed=5)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(["logits"], inputs)[0], keras_logits(model, inputs), atol=1e-5)
    meta = session.get_modelmeta().custom_metadata_map
    assert "odir.thresholds" not in meta and "odir.trained_on" not in meta  # none beside it, none recorded


def test_torch_program_runs_with_torch_export_load(run, capsys):
    out = run.parent.parent / "model.pt2"
    assert main([str(run), str(out), "--format", "torch"]) == 0
    printed = capsys.readouterr().out
    assert "export check: max |logit diff| " in printed and ": ok" in printed
    extra = {key: "" for key in ("odir.format", "odir.architecture", "odir.config_toml")}
    program = torch.export.load(str(out), extra_files=extra)
    assert extra["odir.format"] == "1" and json.loads(extra["odir.architecture"])["head"] == "v2"
    inputs = pairs(SIZE, 4, seed=7)
    with torch.no_grad():
        probabilities, logits = program.module()(*(torch.from_numpy(inputs[k]) for k in ("left", "right")))
    np.testing.assert_allclose(logits.numpy(), keras_logits(run, inputs), atol=1e-5)
    np.testing.assert_allclose(probabilities.numpy(), _sigmoid(logits.numpy()), atol=1e-6)
    from keras_odir.weights import read_keras_model

    weights = 4 * read_keras_model(run).count_params()
    assert out.stat().st_size < 1.2 * weights  # every weight stored once


TF_RUN = """
import sys, numpy as np, tensorflow as tf
serve = tf.saved_model.load(sys.argv[1]).signatures["serve"]
inputs = np.load(sys.argv[2])
out = serve(left=tf.constant(inputs["left"]), right=tf.constant(inputs["right"]))
np.savez(sys.argv[3], **{k: v.numpy() for k, v in out.items()})
"""


def test_saved_model_serves_the_keras_model(run, tmp_path):
    out = tmp_path / "saved"
    assert main([str(run), str(out), "--format", "saved_model"]) == 0
    meta = json.loads((out / export_formats.SAVED_MODEL_METADATA).read_text())
    assert meta["odir.source"] == "best.keras" and json.loads(meta["odir.labels"]) == list(LABELS)
    inputs = pairs(SIZE, 1, seed=3)
    np.savez(tmp_path / "in.npz", **inputs)
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", TF_RUN, str(out), str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    with np.load(tmp_path / "out.npz") as found:
        np.testing.assert_allclose(found["logits"], keras_logits(run, inputs), atol=1e-5)
        np.testing.assert_allclose(found["probabilities"], _sigmoid(found["logits"]), atol=1e-6)


# ---- bad input: one line, exit 2 (1 for a failed check), nothing at OUT


def _refused(capsys, argv, code=2) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_bad_input_is_one_line(run, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:  # argparse
        main([str(run), str(tmp_path / "m.onnx"), "--format", "tflite"])
    assert exc.value.code == 2 and "invalid choice: 'tflite'" in capsys.readouterr().err
    taken = tmp_path / "taken.onnx"
    taken.write_bytes(b"mine")
    assert "already exists" in _refused(capsys, [str(run), str(taken), "--format", "onnx"])
    assert taken.read_bytes() == b"mine"
    assert "writes a .onnx file" in _refused(capsys, [str(run), str(tmp_path / "m.pt2"), "--format", "onnx"])
    assert "not a writable folder" in _refused(capsys, [str(run), str(taken / "m.onnx"), "--format", "onnx"])
    assert "model file not found" in _refused(capsys, [str(tmp_path / "no.keras"), str(tmp_path / "m.onnx"),
                                                       "--format", "onnx"])
    fake = tmp_path / "run" / "best.keras"
    fake.parent.mkdir()
    fake.write_text("not a model")
    (tmp_path / "run" / "config.toml").write_bytes((run.parent / "config.toml").read_bytes())
    assert "not a .keras model" in _refused(capsys, [str(fake), str(tmp_path / "m.onnx"), "--format", "onnx"])
    assert "export takes a .keras/.pth/.pt" in _refused(capsys, [str(tmp_path / "m.onnx"), str(tmp_path / "n.onnx"),
                                                                 "--format", "onnx"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "taken.onnx"]


def test_model_with_non_finite_weights_is_refused(tmp_path, capsys):
    import keras

    from keras_odir.weights import read_keras_model

    path = keras_run(tmp_path / "run", "resnet18", "v0", SIZE, extras=False)
    model = read_keras_model(path)
    kernel = model.get_layer("head").weights[0]
    kernel.assign(np.full(tuple(kernel.shape), np.nan, "float32"))
    path.unlink()
    model.save(path)
    assert keras.backend.backend() == "torch"
    assert "non-finite weights" in _refused(capsys, [str(path), str(tmp_path / "m.onnx"), "--format", "onnx"])
    assert not (tmp_path / "m.onnx").exists() and not _leftovers(tmp_path)


def test_config_for_another_architecture_is_refused(run, tmp_path, capsys):
    other = tmp_path / "other.toml"
    other.write_text((run.parent / "config.toml").read_text().replace('backbone = "resnet18"', 'backbone = "resnet34"'))
    err = _refused(capsys, [str(run), str(tmp_path / "m.onnx"), "--format", "onnx", "--train-config", str(other)])
    assert "resnet18 + v2 but its config says resnet34 + v2" in err


@pytest.mark.parametrize("fmt, name", [("onnx", "m.onnx"), ("saved_model", "saved")])
def test_failed_check_leaves_nothing(run, tmp_path, capsys, monkeypatch, fmt, name):
    def wrong(model, path, size, example, inputs, metadata):  # writes something, then computes other logits
        (path / "x" if path.is_dir() else path).write_bytes(b"partial")
        logits = keras_logits(run, inputs) + 0.5
        return {"logits": logits, "probabilities": _sigmoid(logits)}

    monkeypatch.setitem(export_formats.FORMATS, fmt, wrong)
    err = _refused(capsys, [str(run), str(tmp_path / name), "--format", fmt], code=1)
    assert "export check failed: max |logit diff| 0.5 > tolerance" in err
    assert list(tmp_path.iterdir()) == []

