"""The three formats of ``keras_odir.export``: each writes a dual model's inference graph (inputs ``left``, ``right``
float32 NHWC [batch, S, S, 3], dynamic batch; outputs ``probabilities``, ``logits`` [batch, 8]) with its metadata,
loads the written file back with its own runtime and returns its outputs on the check inputs.

- ``onnx``: ``torch.onnx.export(dynamo=True)`` of the model on Keras' torch backend (an ``nn.Module``), opset 18;
  metadata in the file's ``metadata_props``; read back with onnxruntime.
- ``torch``: a ``torch.export`` ExportedProgram saved with ``torch.export.save`` (``.pt2``); metadata in its
  ``extra_files``; read back with ``torch.export.load`` (torch alone runs it).
- ``saved_model``: Keras' ``ExportArchive`` on the tensorflow backend, in a subprocess
  (``keras_odir.export_saved_model``); metadata in ``assets/odir_metadata.json``; read back with
  ``tf.saved_model.load``.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import keras
import numpy as np
import torch

import keras_odir
from odir_core.errors import OdirError
from odir_core.evaluation.export_metadata import INPUTS, OUTPUTS

OPSET = 18
SAVED_MODEL_METADATA = "assets/odir_metadata.json"  # inside the SavedModel folder


class ExportError(OdirError):
    """An export that could not be written or does not read back as written (exit 1; nothing is left at OUT)."""


class _Serving(torch.nn.Module):
    """The dual model as the exported graph sees it: positional ``left``, ``right`` -> (probabilities, logits).

    The Keras model is held outside torch's module tree: Keras' torch layers read their weights as tensors, which
    the exporters store as constants, so weights registered as parameters as well would be stored twice."""

    def __init__(self, model: keras.Model):
        super().__init__()
        object.__setattr__(self, "_model", model)

    def forward(self, left, right):
        logits = self._model({"left": left, "right": right}, training=False)
        return torch.sigmoid(logits), logits


def _traced(model: keras.Model, example: dict[str, np.ndarray]):
    """(module, example args, dynamic shapes: the batch dimension of both inputs)."""
    batch = torch.export.Dim("batch")
    args = tuple(torch.from_numpy(example[name]) for name in INPUTS)
    return _Serving(model).eval(), args, {name: {0: batch} for name in INPUTS}


def _same_metadata(found: dict[str, str], metadata: dict[str, str], path: Path) -> None:
    if found != metadata:
        raise ExportError(f"{path}: the metadata read back differs from the metadata written "
                          f"({sorted(set(found.items()) ^ set(metadata.items()))[:2]})")


def export_onnx(model: keras.Model, path: Path, size: int, example, inputs, metadata) -> dict[str, np.ndarray]:
    """Write ``path`` (.onnx) and run it with onnxruntime on ``inputs``."""
    import onnxruntime

    module, args, dynamic = _traced(model, example)
    with warnings.catch_warnings():  # both inputs' batch dimensions are one symbol; torch says so at length
        warnings.filterwarnings("ignore", message="# The axis name", category=UserWarning)
        program = torch.onnx.export(module, args, input_names=list(INPUTS), output_names=list(OUTPUTS), dynamo=True,
                                    dynamic_shapes=dynamic, opset_version=OPSET, verbose=False)
    program.model.metadata_props.update(metadata)
    program.save(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    _same_metadata(dict(session.get_modelmeta().custom_metadata_map), metadata, path)
    return dict(zip(OUTPUTS, session.run(list(OUTPUTS), {name: inputs[name] for name in INPUTS})))


def export_torch(model: keras.Model, path: Path, size: int, example, inputs, metadata) -> dict[str, np.ndarray]:
    """Write ``path`` (.pt2) and run the program loaded back with ``torch.export.load`` on ``inputs``."""
    module, args, dynamic = _traced(model, example)
    # Traced with autograd on, as the ONNX exporter traces: under torch.no_grad() torch.export's grad-mode pass
    # recompiles the graph node by node (resnet18 4x slower, densenet121 minutes longer), for the same program.
    program = torch.export.export(module, args, dynamic_shapes=dynamic)
    archive = io.BytesIO()  # a file object: the archive's inner folder is not named after the temporary file
    torch.export.save(program, archive, extra_files=metadata)
    path.write_bytes(archive.getvalue())
    found = {key: "" for key in metadata}
    loaded = torch.export.load(str(path), extra_files=found)
    _same_metadata(found, metadata, path)
    with torch.no_grad():
        outputs = loaded.module()(*(torch.from_numpy(inputs[name]) for name in INPUTS))
    return {name: out.detach().cpu().numpy() for name, out in zip(OUTPUTS, outputs)}


def export_saved_model(model: keras.Model, folder: Path, size: int, example, inputs,
                       metadata) -> dict[str, np.ndarray]:
    """Write the SavedModel ``folder`` in a tensorflow-backend subprocess, which also runs it on ``inputs``."""
    with tempfile.TemporaryDirectory(prefix="odir-export-") as work:
        work = Path(work)
        model.save(work / "source.keras")
        np.savez(work / "inputs.npz", **inputs)
        root = str(Path(keras_odir.__file__).resolve().parents[1])
        env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": "",
               "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
        done = subprocess.run([sys.executable, "-m", "keras_odir.export_saved_model", str(work / "source.keras"),
                               str(folder), str(size), str(work / "inputs.npz"), str(work / "outputs.npz")],
                              env=env, capture_output=True, text=True)
        if done.returncode != 0:
            lines = [line for line in done.stderr.splitlines() if line.strip()]
            last = lines[-1] if lines else f"exit code {done.returncode}"
            if "No module named 'tensorflow'" in done.stderr:
                last = "tensorflow is not installed: pip install tensorflow-cpu (keras-odir[tf])"
            raise ExportError(f"{folder}: the SavedModel export on the tensorflow backend failed: {last}")
        with np.load(work / "outputs.npz") as arrays:
            outputs = {name: arrays[name] for name in OUTPUTS}
    (folder / SAVED_MODEL_METADATA).parent.mkdir(exist_ok=True)
    (folder / SAVED_MODEL_METADATA).write_text(json.dumps(metadata, indent=1) + "\n", encoding="utf-8")
    return outputs


FORMATS = {"onnx": export_onnx, "saved_model": export_saved_model, "torch": export_torch}
SUFFIXES = {"onnx": ".onnx", "torch": ".pt2"}  # the file name OUT must end with; a SavedModel is a folder
