"""An exported ``.onnx`` model (``python -m keras_odir.export``) as a :class:`~odir_core.evaluation.inference.Predictor`
run by onnxruntime alone: no deep-learning framework is imported. Its metadata (``export_metadata``) gives the
training config, thresholds and provenance when no files beside it do."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from odir_core.evaluation import export_metadata
from odir_core.evaluation.inference import InferenceError
from odir_core.training.devices import resolve_device

GRADCAM_ERROR = "Grad-CAM needs the model's weights: pass the .keras/.pth it was exported from"


def gradcam_refusal(path, metadata: dict[str, str]) -> InferenceError:
    """The error for Grad-CAM asked of an exported model, naming the file it was exported from when recorded."""
    source = metadata.get(export_metadata.SOURCE)
    return InferenceError(f"{path}: {GRADCAM_ERROR}" + (f" ({source})" if source else ""))


class OnnxError(InferenceError):
    """An .onnx file onnxruntime cannot use, or a device it cannot run on (one line naming the file)."""


def _runtime():
    try:
        import onnxruntime
    except ModuleNotFoundError:
        raise OnnxError("an .onnx model needs onnxruntime: pip install onnxruntime") from None
    return onnxruntime


def _session(path: Path, providers: list[str], light: bool = False):
    ort = _runtime()
    options = ort.SessionOptions()
    if light:  # metadata only: no graph optimisation
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NoSuchFile for a bad file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise OnnxError(f"{path}: not a usable ONNX model ({type(exc).__name__}: {first[:200]}); export it again "
                        "with python -m keras_odir.export") from None


def read_metadata(path) -> dict[str, str]:
    """The string metadata (``metadata_props``) of an .onnx file."""
    path = Path(path)
    return dict(_session(path, ["CPUExecutionProvider"], light=True).get_modelmeta().custom_metadata_map)


def providers(device: str) -> list:
    """onnxruntime execution providers for ``--device`` (``auto``: CUDA when onnxruntime has it, else the CPU)."""
    cuda = "CUDAExecutionProvider" in _runtime().get_available_providers()
    name = resolve_device(device, cuda)
    if name == "cpu":
        return ["CPUExecutionProvider"]
    index = int(name.partition(":")[2] or 0)
    return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]


class OnnxPredictor:
    """An exported model: inputs ``left``, ``right`` (float32 NHWC), outputs ``probabilities``, ``logits``."""

    def __init__(self, session, path: Path):
        self.session = session
        self.path = path
        self.metadata = dict(session.get_modelmeta().custom_metadata_map)

    def predict(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        want = tuple(self.session.get_inputs()[0].shape[1:])
        if tuple(left.shape[1:]) != want or right.shape != left.shape:
            raise InferenceError(f"{self.path} takes {want[0]} x {want[1]} inputs, got {tuple(left.shape[1:3])}: the "
                                 "config it was given (config.toml beside it or --train-config) is not the one it was "
                                 "exported with; remove it to use the config the file records")
        feed = {"left": np.ascontiguousarray(left, np.float32), "right": np.ascontiguousarray(right, np.float32)}
        probabilities, = self.session.run(["probabilities"], feed)
        return np.asarray(probabilities, dtype=np.float64)

    def gradcam_stages(self, size):
        raise gradcam_refusal(self.path, self.metadata)

    def gradcam(self, left, right, label, stage=None):
        raise gradcam_refusal(self.path, self.metadata)


def load_predictor(path, device: str = "auto") -> OnnxPredictor:
    """An .onnx file exported by keras_odir.export, on ``--device``; its metadata is checked."""
    path = Path(path)
    session = _session(path, providers(device))
    predictor = OnnxPredictor(session, path)
    export_metadata.config(predictor.metadata, path)  # a file without our metadata is refused here
    return predictor
