"""Shared pieces of the keras_odir.train and torch_odir.train end-to-end tests."""

import io
import zipfile
from pathlib import Path

import h5py
import numpy as np


def tiny_train_args(data, run_dir, *extra) -> list[str]:
    """Flags for a fast run on a tiny set: ResNet50 (the study's), 32 px, batch 8, random weights, unweighted
    loss, no workers."""
    return ["--data", str(data), "--run-dir", str(run_dir), "--backbone", "resnet50", "--image-size", "32", "--batch-size", "8",
            "--weights", "none", "--no-weighted-loss", "--experiment", "t", "--workers", "0", *extra]


# ResNet-18 where what a test checks (resume, console, precision, losses) is the same for any network, at a third of
# ResNet-50's layers; the end-to-end CLI tests keep the study's ResNet-50
SMALL = ("--backbone", "resnet18")


def only_run(run_root: Path) -> Path:
    """The single run folder under ``run_root`` (fails when there are none or several)."""
    runs = sorted(p for p in run_root.iterdir() if p.is_dir())
    assert len(runs) == 1, runs
    return runs[0]


def keras_weights(path: Path, optimizer: bool = True) -> dict[str, np.ndarray]:
    """The weights a ``.keras`` file holds (with ``optimizer=False`` the model's alone), by their path in its
    ``model.weights.h5``, read without building the model (a fraction of a second, where loading it takes one)."""
    values = {}

    def keep(name, item):
        if isinstance(item, h5py.Dataset) and (optimizer or not name.startswith("optimizer/")):
            values[name] = item[()]

    with zipfile.ZipFile(path) as archive, h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as h5:
        h5.visititems(keep)
    return values
