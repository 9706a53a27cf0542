"""What a model was trained on: recorded in every checkpoint by both trainers, stated by predict and evaluate.

A record is a dict: ``data`` (the prepared folder as an absolute path, or the TFDS dataset),
``synthetic`` (its images were generated, ``odir_core.data.synthetic.is_synthetic``), ``run`` (the run
folder, absolute), ``experiment`` and ``epoch`` (1-based, as the training log counts).
torch_odir's ``.pth`` holds it as its ``"trained_on"`` entry. A keras_odir ``.keras`` file is a zip
archive (Keras' ``config.json``, ``metadata.json``, ``model.weights.h5``); the record is one more
entry in it, :data:`KERAS_ENTRY`, which Keras' loader ignores and which moves with the file.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from odir_core.model.checkpoints import KERAS_SUFFIX

KERAS_ENTRY = "odir_trained_on.json"
TORCH_KEY = "trained_on"
SYNTHETIC_NOTE = "trained on synthetic demo data, not for real photographs"
UNKNOWN_NOTE = "training data unknown: the model file does not record it"


def training_record(data: str, synthetic: bool, run_dir, experiment: str) -> dict[str, Any]:
    """The record of a run (without the epoch, see :func:`at_epoch`)."""
    return {"data": str(data), "synthetic": bool(synthetic), "run": str(Path(run_dir).resolve()),
            "experiment": experiment}


def at_epoch(record: dict[str, Any], epoch: int) -> dict[str, Any]:
    """``record`` for the checkpoint of ``epoch`` (0-based, stored 1-based)."""
    return {**record, "epoch": int(epoch) + 1}


def describe(record: dict[str, Any] | None) -> str:
    """One line for users: what the model was trained on."""
    if not record:
        return UNKNOWN_NOTE
    where = f"run {record.get('run', '?')}, experiment {record.get('experiment', '?')}, epoch {record.get('epoch', '?')}"
    if record.get("synthetic"):
        return f"{SYNTHETIC_NOTE} ({record.get('data', '?')}; {where})"
    return f"trained on {record.get('data', '?')} ({where})"


def write_keras(path, record: dict[str, Any]) -> None:
    """Add ``record`` to a saved ``.keras`` archive (call it before the file is renamed into place)."""
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr(KERAS_ENTRY, json.dumps(record, indent=1) + "\n")


def _valid(record: Any) -> dict[str, Any] | None:
    return record if isinstance(record, dict) and "data" in record else None


def read(path, torch_load: Callable[[Path], Any] | None = None) -> dict[str, Any] | None:
    """The record a model file holds, or None when it holds none (or cannot be read).

    ``.keras``: the archive entry; a torch file: its ``"trained_on"`` entry, read with ``torch_load``
    (``torch.load``; without one, None).
    """
    path = Path(path)
    try:
        if path.suffix == KERAS_SUFFIX:
            with zipfile.ZipFile(path) as archive:
                if KERAS_ENTRY not in archive.namelist():
                    return None
                return _valid(json.loads(archive.read(KERAS_ENTRY)))
        if torch_load is None:
            return None
        checkpoint = torch_load(path)
    except Exception:  # a damaged file: the model loader reports it
        return None
    return _valid(checkpoint.get(TORCH_KEY)) if isinstance(checkpoint, dict) else None
