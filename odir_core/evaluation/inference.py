"""Framework-free inference plumbing shared by the evaluate and predict CLIs of both packages.

A framework package supplies a :class:`Backend`: how to load its model file into a
:class:`Predictor` (probabilities for a batch of eye pairs, Grad-CAM maps). Everything else --
the run's input settings, image preparation, test-time augmentation, batching -- lives here.
Every backend also loads an exported ``.onnx`` model (``odir_core.evaluation.onnx_predictor``, onnxruntime
only), whose metadata holds its config, thresholds and provenance when no files beside it do.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm.auto import tqdm

from odir_core.cli_config import ConfigError
from odir_core.data.annotations import AnnotationError
from odir_core.data.augment import center_crop, normalize
from odir_core.data.dataset import DataError
from odir_core.data.imageio import ImageDecodeError
from odir_core.data.preprocess import PreprocessError, prepare_image
from odir_core.data.splits import SplitError
from odir_core.errors import InputError, OdirError
from odir_core.evaluation import export_metadata
from odir_core.evaluation.thresholds import THRESHOLDS_FILE, ThresholdError
from odir_core.model import provenance
from odir_core.scores import MetricsError
from odir_core.training.config import TrainConfig
from odir_core.training.config_files import load_config
from odir_core.training.run import CONFIG_FILE, DataSourceError

TTA_MODES = ("none", "hflip", "vflip", "both")
TTA_HELP = (
    "test-time augmentation, probabilities averaged over the views: none; hflip (+ both eyes mirrored "
    "and swapped, as training's horizontal flip); vflip (+ both eyes upside down); both (original, hflip, "
    "vflip and hflip+vflip)"
)


ONNX_SUFFIX = ".onnx"  # an exported model (keras_odir.export), loaded by every backend
# "module:function" of the ONNX loader and metadata reader (imported when an .onnx model is used)
ONNX_LOADER = "odir_core.evaluation.onnx_predictor:load_predictor"
ONNX_METADATA = "odir_core.evaluation.onnx_predictor:read_metadata"


class InferenceError(InputError):
    """A model, run folder or input that cannot be used (one line saying which and what to do)."""


# Bad input the CLIs report as one line with exit code 2 (anything else is a bug and keeps its traceback).
USER_ERRORS = (
    InferenceError, AnnotationError, ConfigError, DataError, DataSourceError, ImageDecodeError, MetricsError,
    PreprocessError, SplitError, ThresholdError, FileExistsError, FileNotFoundError, PermissionError,
    IsADirectoryError, NotADirectoryError,
)


class Predictor(Protocol):
    """A loaded model. Inputs: float32 NHWC batches of left and right eyes, as odir_core prepares them."""

    def predict(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """(n, 8) sigmoid probabilities."""

    def gradcam_stages(self, size: tuple[int, int]) -> list[tuple[str, tuple[int, int]]]:
        """The stages Grad-CAM can explain, early to late (the backbone's ``earlier_stages``, then its
        ``gradcam_stage``), each with the (h, w) of its feature map for inputs of ``size`` (h, w)."""

    def gradcam(self, left: np.ndarray, right: np.ndarray, label: int,
                stage: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Grad-CAM maps (h, w) in [0, 1] of backbone module ``stage`` for one patient (batch of 1), per eye;
        None: :func:`choose_gradcam_stage` at the inputs' size."""


@dataclass(frozen=True)
class Backend:
    """What a framework package provides to the shared CLIs.

    ``loader``: "module:function" of ``function(path, device) -> Predictor`` (``device``: ``--device``, checked
    by ``odir_core.training.devices``), imported only when a model is loaded, so that --help and --probs evaluation do not import the framework.
    ``torch_load``: "module:function" reading what a torch checkpoint file holds (``torch.load``), for the
    record of what it was trained on (``odir_core.model.provenance``).
    """

    name: str  # e.g. "keras_odir"
    model_suffixes: tuple[str, ...]  # model files it loads, its own first: (".keras", ".pth", ".pt")
    loader: str
    torch_load: str = ""

    @property
    def model_suffix(self) -> str:
        """The suffix of the models its own training writes."""
        return self.model_suffixes[0]

    @property
    def accepted_suffixes(self) -> tuple[str, ...]:
        """Its model files and an exported .onnx model."""
        return (*self.model_suffixes, ONNX_SUFFIX)

    def load(self, path: Path, device: str = "auto") -> Predictor:
        return _function(ONNX_LOADER if Path(path).suffix == ONNX_SUFFIX else self.loader)(path, device)

    def trained_on(self, path: Path) -> dict | None:
        """What the model file records it was trained on (``odir_core.model.provenance``), None when nothing."""
        return provenance.read(path, _function(self.torch_load) if self.torch_load else None)


def _function(name: str):
    module, function = name.split(":")
    return getattr(importlib.import_module(module), function)


@dataclass(frozen=True)
class Model:
    """A loaded model with its training run's settings."""

    path: Path
    config: TrainConfig
    predictor: Predictor
    trained_on: dict | None = None  # odir_core.model.provenance record; None: the file does not say
    embedded_thresholds: np.ndarray | None = None  # (8,) thresholds an exported model's metadata records

    @property
    def training_note(self) -> str:
        """One line: what the model was trained on (synthetic data says it is not for real photographs)."""
        return provenance.describe(self.trained_on)

    @property
    def run_dir(self) -> Path:
        return self.path.parent

    @property
    def thresholds_path(self) -> Path:
        return self.path.parent / THRESHOLDS_FILE


DEVICE_HELP = ("where the model runs: 'auto' (cuda when available), 'cpu', 'cuda', 'cuda:N'; an unavailable one is "
               "an error (keras_odir: on the torch backend; jax and tensorflow take auto only)")
TRAIN_CONFIG_HELP = (f"training config of a model with no {CONFIG_FILE} beside it (e.g. the study's own .pth): "
                     "the experiments/experiment_NN.toml it was trained with (image size, crop, normalisation, data)")


def run_config(model_path: Path, train_config=None) -> TrainConfig:
    """The training config of a model file: ``train_config`` when given, else its run folder's config.toml,
    else (an exported .onnx model) the config its metadata records."""
    path = Path(train_config) if train_config else Path(model_path).parent / CONFIG_FILE
    if train_config and not path.is_file():
        raise InferenceError(f"--train-config {path}: no such file")
    if not path.is_file() and Path(model_path).suffix == ONNX_SUFFIX:
        return export_metadata.config(_function(ONNX_METADATA)(model_path), model_path)
    if not path.is_file():
        raise InferenceError(
            f"{model_path}: no {CONFIG_FILE} beside it; pass a model from a training run folder, or give the "
            "settings it was trained with as --train-config experiments/experiment_NN.toml "
            "(the config tells image size, crop and normalisation)"
        )
    try:
        return load_config(path)
    except ConfigError as exc:
        raise InferenceError(str(exc)) from None


def model_config(backend: Backend, path, train_config=None) -> TrainConfig:
    """Check a model file's name and read its run config (cheap: the model itself is not loaded)."""
    path = Path(path)
    if not path.is_file():
        raise InferenceError(f"{path}: model file not found; pass RUN_DIR/best{backend.model_suffix} of a training run")
    if path.suffix not in backend.accepted_suffixes:
        raise InferenceError(f"{path}: {backend.name} loads {'/'.join(backend.accepted_suffixes)} files; "
                             f"got {path.suffix or 'no suffix'}")
    return run_config(path, train_config)


def load_model(backend: Backend, path, config: TrainConfig | None = None, train_config=None,
               device: str = "auto") -> Model:
    """Load a model file with its run config onto ``device`` (``--device``); clear errors for a missing or wrong
    file or an unavailable device."""
    path = Path(path)
    config = config or model_config(backend, path, train_config)
    try:
        predictor = backend.load(path, device)
    except OdirError:
        raise  # already one line naming the file
    except ModuleNotFoundError as exc:  # e.g. keras or torch not installed where only onnxruntime is
        raise InferenceError(f"{path}: loading it needs {exc.name}, which is not installed; install it, or export "
                             "the model (python -m keras_odir.export) and pass the .onnx") from None
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise InferenceError(f"{path}: cannot load the model ({type(exc).__name__}: {exc})") from None
    if path.suffix == ONNX_SUFFIX:
        meta = predictor.metadata
        return Model(path, config, predictor, export_metadata.trained_on(meta), export_metadata.thresholds(meta, path))
    return Model(path, config, predictor, backend.trained_on(path))


def model_input(img: np.ndarray, config: TrainConfig) -> np.ndarray:
    """uint8 image at config.image_size -> float32 HWC model input (centre crop, normalisation as in validation)."""
    if config.crop_size and config.crop_size != img.shape[0]:
        img = center_crop(img, config.crop_size)
    if config.normalize:
        return normalize(img).astype(np.float32, copy=False)
    return img.astype(np.float32) / np.float32(255.0)


def prepare_photo(source, config: TrainConfig, notes: list[str] | None = None) -> np.ndarray:
    """A raw (or already prepared) fundus photograph, a path or its encoded bytes -> uint8 (image_size,
    image_size, 3), the training chain; ``notes`` receives a line per repair (white surround, upscaling).

    Raises odir_core.data.preprocess.PreprocessError for missing, unreadable or non-fundus images.
    """
    return prepare_image(source, config.image_size, notes=notes)


def tta_views(left: np.ndarray, right: np.ndarray, mode: str = "none") -> list[tuple[np.ndarray, np.ndarray]]:
    """The (left, right) NHWC batches a TTA mode averages over. A horizontal flip mirrors both eyes and
    swaps them (a mirrored right eye looks like a left eye), as the training augmentation does."""
    if mode not in TTA_MODES:
        raise InferenceError(f"unknown TTA mode {mode!r}; use one of {', '.join(TTA_MODES)}")

    def hflip(l, r):
        return r[:, :, ::-1], l[:, :, ::-1]

    def vflip(l, r):
        return l[:, ::-1], r[:, ::-1]

    views = [(left, right)]
    if mode in ("hflip", "both"):
        views.append(hflip(left, right))
    if mode in ("vflip", "both"):
        views.append(vflip(left, right))
    if mode == "both":
        views.append(vflip(*hflip(left, right)))
    return [(np.ascontiguousarray(l), np.ascontiguousarray(r)) for l, r in views]


def predict_batch(predictor: Predictor, left: np.ndarray, right: np.ndarray, tta: str = "none") -> np.ndarray:
    """(n, 8) probabilities of one batch, averaged over the TTA views."""
    probs = [np.asarray(predictor.predict(l, r), dtype=np.float64) for l, r in tta_views(left, right, tta)]
    return np.mean(probs, axis=0)


def predict_dataset(predictor: Predictor, dataset, batch_size: int = 16, tta: str = "none", desc: str = "predict") -> np.ndarray:
    """Probabilities for every patient of an odir_core.data.dataset.DualEyeDataset (validation mode), in its order."""
    order = np.arange(len(dataset))
    out = []
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch"):
        inputs, _ = dataset.batch(order[start : start + batch_size])
        out.append(predict_batch(predictor, inputs["left"], inputs["right"], tta))
    return np.concatenate(out) if out else np.zeros((0, 8))


GRADCAM_MIN_MAP = 7  # Grad-CAM's map is the stage's: smaller than about 7 x 7 it cannot say where


def choose_gradcam_stage(stages: list[tuple[str, tuple[int, int]]],
                         min_size: int = GRADCAM_MIN_MAP) -> tuple[str, tuple[int, int]]:
    """The stage Grad-CAM explains, from ``Predictor.gradcam_stages`` (early to late): the last one when
    its map is at least ``min_size`` on its short side, else the latest one whose map is, else the first."""
    for name, size in reversed(stages):
        if min(size) >= min_size:
            return name, size
    return stages[0]


def gradcam_map(activations: np.ndarray, gradients: np.ndarray, channels_last: bool = True) -> np.ndarray:
    """Grad-CAM (Selvaraju et al. 2017) of one image: ReLU(sum_k mean(dy/dA_k) * A_k), scaled to [0, 1].

    ``activations`` and ``gradients``: (h, w, c) when ``channels_last`` else (c, h, w).
    """
    a = np.asarray(activations, dtype=np.float64)
    g = np.asarray(gradients, dtype=np.float64)
    if not channels_last:
        a, g = np.moveaxis(a, 0, -1), np.moveaxis(g, 0, -1)
    cam = np.maximum((a * g.mean(axis=(0, 1))).sum(axis=-1), 0.0)
    peak = cam.max()
    return (cam / peak if peak > 0 else cam).astype(np.float32)
