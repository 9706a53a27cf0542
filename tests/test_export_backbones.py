"""Every registered backbone (random weights, 32 px, the default head) exported to every format by the export CLI,
and torch_odir's .pth to every format: the figure the CLI prints is within ``CHECK_TOLERANCE``, and each artefact,
run again by its own runtime (onnxruntime; ``torch.export.load``; ``tf.saved_model.load`` in one
tensorflow-backend subprocess for all of them), agrees with the source model's own logits to the same tolerance.

The backbones in ``SLOW`` are exported under ``-m slow`` only (minutes each), and so is the .pth's SavedModel; the
default run exports the .pth to the other formats."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from export_runs import keras_logits, keras_run, pairs

from keras_odir.export import main
from odir_core.evaluation.export_metadata import CHECK_TOLERANCE
from odir_core.model.model_spec import BACKBONES
from odir_core.training.config import TrainConfig
from odir_core.training.config_files import save_config

SIZE, BATCH, SEED = 32, 2, 21
FORMATS = {"onnx": "model.onnx", "torch": "model.pt2", "saved_model": "saved_model"}
# Exported under -m slow only (1-10 minutes each on 2 CPU cores). The default run keeps torch_odir's resnet18 .pth
# (test_export exports resnet18 .keras models to every format too); a backbone that joins the registry is in the
# default run until it is named here.
SLOW = {"resnet18", "resnet34", "resnet50", "resnet101", "densenet121", "efficientnet_b0", "efficientnet_b3",
        "convnext_tiny", "vit_b_16", "vit_l_16", "retfound"}
PTH = "resnet18.pth"  # torch_odir's checkpoint, a source of its own
# The default run exports the .pth to ONNX and a torch program; its SavedModel (a tensorflow process) is a slow check:
# the .pth is read into the same Keras model as a .keras is, and tests/test_export.py serves a SavedModel of one
PTH_DEFAULT_FORMATS = ("onnx", "torch")
PRINTED = re.compile(r"export check: max \|logit diff\| (\S+), tolerance (\S+): ok")

TF_RERUN = """
import sys, numpy as np, tensorflow as tf
inputs = np.load(sys.argv[1])
for folder in sys.argv[2:]:
    serve = tf.saved_model.load(folder).signatures["serve"]
    out = serve(left=tf.constant(inputs["left"]), right=tf.constant(inputs["right"]))
    np.save(folder + ".logits.npy", out["logits"].numpy())
"""


def _relative(found, reference) -> float:
    """max |found - reference| / max(1, max |reference|): what ``CHECK_TOLERANCE`` bounds."""
    return float(np.max(np.abs(np.asarray(found, np.float64) - reference)) / max(1.0, np.abs(reference).max()))


def _export(model: Path, out: Path, fmt: str) -> dict:
    """The export CLI on ``model``: its printed figure relative to its tolerance, and the seconds it took."""
    printed, start = io.StringIO(), time.perf_counter()
    with contextlib.redirect_stdout(printed):
        code = main([str(model), str(out), "--format", fmt])
    found = PRINTED.search(printed.getvalue())
    assert code == 0 and found, printed.getvalue()
    diff, tol = float(found[1]), float(found[2])
    return {"printed": diff / tol * CHECK_TOLERANCE, "seconds": time.perf_counter() - start}


def _rerun(out: Path, fmt: str, inputs: dict[str, np.ndarray]) -> np.ndarray | None:
    """The artefact's logits on ``inputs`` by its own runtime (None for a SavedModel: run later, all at once)."""
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        return session.run(["logits"], inputs)[0]
    if fmt == "torch":
        with torch.no_grad():
            return torch.export.load(str(out)).module()(*(torch.from_numpy(inputs[k]) for k in ("left", "right")))[1]
    return None


def _rerun_saved_models(folders: list[Path], inputs: dict[str, np.ndarray], work: Path) -> None:
    """Every SavedModel of ``folders`` run by TensorFlow in one tensorflow-backend subprocess (``FOLDER.logits.npy``)."""
    np.savez(work / "inputs.npz", **inputs)
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run([sys.executable, "-c", TF_RERUN, str(work / "inputs.npz"), *map(str, folders)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]


def _pth_run(folder: Path) -> tuple[Path, torch.nn.Module]:
    """torch_odir's best.pth of a random-weight resnet18 + v0 (saved as torch_odir.train saves it, BatchNorm
    statistics away from 0 / 1) with its config.toml, and the torch model itself."""
    from torch_odir.model import DualNet

    folder.mkdir(parents=True)
    torch.manual_seed(3)
    model = DualNet("resnet18", "v0").eval()
    with torch.no_grad():
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.normal_(0, 0.1)
            elif name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
    config = TrainConfig(data="data", backbone="resnet18", head="v0", image_size=SIZE, weights="none")
    torch.save({"state_dict": model.state_dict(), "config": config.to_dict(), "epoch": 0}, folder / "best.pth")
    save_config(config, folder / "config.toml")
    return folder / "best.pth", model


def _torch_logits(model: torch.nn.Module, inputs: dict[str, np.ndarray]) -> np.ndarray:
    with torch.no_grad():
        return model(*(torch.from_numpy(inputs[k]).permute(0, 3, 1, 2) for k in ("left", "right"))).numpy()


def _export_all(cases: list[str], root: Path, formats=tuple(FORMATS)) -> dict[str, dict]:
    """Each case (a backbone's .keras, or ``PTH``) exported to each of ``formats`` and each artefact run again: per
    case and format {"printed", "rerun" (relative differences), "seconds"}, or the exception that stopped the case."""
    inputs = pairs(SIZE, BATCH, SEED)
    results, saved = {}, []
    for case in cases:
        try:
            if case == PTH:
                model, source = _pth_run(root / case)
                reference = _torch_logits(source, inputs).astype(np.float64)
            else:
                model = keras_run(root / case, case, "v0", SIZE, extras=False)
                reference = keras_logits(model, inputs).astype(np.float64)
            np.save(root / case / "reference.npy", reference)
            found = {}
            for fmt in formats:
                out = root / case / FORMATS[fmt]
                found[fmt] = _export(model, out, fmt)
                logits = _rerun(out, fmt, inputs)
                if logits is not None:
                    found[fmt]["rerun"] = _relative(logits, reference)
            results[case] = found
            if "saved_model" in formats:
                saved.append(root / case / FORMATS["saved_model"])
        except Exception as exc:  # noqa: BLE001 - reported by the case's own test
            results[case] = exc
        print(f"\n{case}: {results[case]}", flush=True)  # shown with -s: the figures for README's table
    if saved:
        _rerun_saved_models(saved, inputs, root)
        for out in saved:
            case = out.parent.name
            results[case]["saved_model"]["rerun"] = _relative(np.load(f"{out}.logits.npy"),
                                                              np.load(root / case / "reference.npy"))
    return results


@pytest.fixture(scope="module")
def default_exports(tmp_path_factory):
    cases = [name for name in BACKBONES if name not in SLOW]
    root = tmp_path_factory.mktemp("exports")
    return {**_export_all(cases, root), **_export_all([PTH], root, PTH_DEFAULT_FORMATS)}


@pytest.mark.parametrize("case", [pytest.param(name, marks=pytest.mark.slow) if name in SLOW else name
                                  for name in BACKBONES] + [PTH])
def test_exports_to_every_format_agree_with_the_source_model(case, request, tmp_path):
    _agree(_export_all([case], tmp_path)[case] if case in SLOW else request.getfixturevalue("default_exports")[case])


@pytest.mark.slow
def test_the_pth_exports_to_a_saved_model_that_agrees(tmp_path):
    _agree(_export_all([PTH], tmp_path, ("saved_model",))[PTH])


def _agree(results) -> None:
    if isinstance(results, Exception):
        raise results
    for fmt, result in results.items():
        assert result["printed"] <= CHECK_TOLERANCE, (fmt, result)
        assert result["rerun"] <= CHECK_TOLERANCE, (fmt, result)
