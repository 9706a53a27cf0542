"""Test helpers for keras_odir.export: tiny random-weight Keras run folders (config.toml, thresholds.json and a
provenance record beside best.keras) and deterministic inputs."""

from __future__ import annotations

import shutil
from pathlib import Path

import keras
import numpy as np

from keras_odir.model import build_dual_model
from odir_core.evaluation.thresholds import save_thresholds
from odir_core.model import provenance
from odir_core.training.config import TrainConfig
from odir_core.training.config_files import save_config

THRESHOLDS = np.array([0.3, 0.45, 0.5, 0.55, 0.6, 0.35, 0.7, 0.4])


def keras_run(folder: Path, backbone: str, head: str, image_size: int, crop_size: int = 0, data: str = "data",
              seed: int = 0, extras: bool = True) -> Path:
    """``folder``/best.keras of a random-weight dual model with its config.toml; ``extras``: also thresholds.json
    and a provenance record in the .keras file."""
    folder.mkdir(parents=True)
    keras.utils.set_random_seed(seed)
    model = build_dual_model(backbone, head)
    for variable in model.non_trainable_weights:  # BatchNorm statistics away from 0 / 1, so folding matters
        if "moving" in variable.path:
            shape = tuple(variable.shape)
            values = np.random.default_rng(seed).uniform(0.5, 1.5, shape) if "variance" in variable.path else \
                np.random.default_rng(seed).normal(0, 0.1, shape)
            variable.assign(values.astype("float32"))
    path = folder / "best.keras"
    model.save(path)
    save_config(TrainConfig(data=str(data), backbone=backbone, head=head, image_size=image_size, crop_size=crop_size,
                            weights="none"), folder / "config.toml")
    if extras:
        provenance.write_keras(path, provenance.at_epoch(
            provenance.training_record(str(data), True, folder, "export-test"), 2))
        save_thresholds(folder / "thresholds.json", THRESHOLDS, metric="f1", source="a test", n_patients=7)
    return path


def pairs(size: int, batch: int, seed: int) -> dict[str, np.ndarray]:
    """Random normalised-image-like inputs ``left``, ``right``."""
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal((batch, size, size, 3)).astype(np.float32) for name in ("left", "right")}


def keras_logits(model_path: Path, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """The source model's own logits (the reference every export is held to)."""
    from keras_odir.weights import read_keras_model

    return keras.ops.convert_to_numpy(read_keras_model(model_path)(inputs, training=False))


def shared_onnx_export(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(best.keras of a resnet18 + v2 run at 64 px cropped to 56 with thresholds.json and a training record, the
    .onnx exported from it alone in another folder, the prepared real samples the run names as its data), made
    once per test session: the tests only read them."""
    from keras_odir.export import export
    from tiny_runs import real_samples_prepared

    root = tmp_path_factory.getbasetemp() / "session" / "onnx_export"  # kept for the session (conftest.py)
    keras_model, onnx_model = root / "run" / "best.keras", root / "exported" / "model.onnx"
    if not (root / "ready").exists():
        shutil.rmtree(root, ignore_errors=True)
        keras_run(root / "run", "resnet18", "v2", 64, crop_size=56, data=str(real_samples_prepared(root / "data")))
        onnx_model.parent.mkdir()
        export(keras_model, onnx_model, "onnx")
        (root / "ready").touch()
    return keras_model, onnx_model, root / "data"
