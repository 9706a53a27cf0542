"""Test helpers: a prepared folder of the real sample photographs and run folders holding random-weight models
saved the way the training CLIs save them (config.toml beside best.keras / best.pth)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from odir_core.data.annotations import COLUMNS, write_annotations
from odir_core.labels import LABELS
from odir_core.training.config import TrainConfig
from odir_core.training.config_files import save_config
from reference_data import REAL_SAMPLES



def real_samples_prepared(root: Path) -> Path:
    """A prepared folder (annotations.xlsx + images/) of the real sample patients, labels from samples.csv."""
    samples = pd.read_csv(REAL_SAMPLES / "samples.csv")
    images = root / "images"
    images.mkdir(parents=True)
    rows = []
    for _, row in samples.iterrows():
        pid = int(row["ID"])
        for side in ("left", "right"):
            shutil.copy(REAL_SAMPLES / f"{pid}_{side}.png", images / f"{pid}_{side}.png")
        rows.append({"ID": pid, "Patient Age": 60, "Patient Sex": "Female", "Left-Fundus": f"{pid}_left.png",
                     "Right-Fundus": f"{pid}_right.png", "Left-Diagnostic Keywords": "", "Right-Diagnostic Keywords": "",
                     **{label: int(row[label]) for label in LABELS}})
    write_annotations(pd.DataFrame(rows, columns=COLUMNS), root / "annotations.xlsx")
    return root


# ResNet-18 (what these tests check, the command-line tools around a model, is the same for any network, at a third
# of ResNet-50's loading time); v2: Dense/ReLU/Dropout after the features; 2 x 2 last-stage map
BACKBONE, HEAD, IMAGE_SIZE, CROP_SIZE = "resnet18", "v2", 64, 56


def run_config(data: Path) -> TrainConfig:
    """The training config of the tiny models (what training writes as config.toml)."""
    return TrainConfig(data=str(data), backbone=BACKBONE, head=HEAD, image_size=IMAGE_SIZE, crop_size=CROP_SIZE,
                       weights="none")


def _build_models(folder: Path, seed: int = 0) -> tuple[Path, Path]:
    """best.pth (saved as torch_odir.train saves it) and best.keras with the same random weights."""
    import torch

    from keras_odir.weights import torch_to_keras_state
    from keras_odir.model import build_dual_model
    from torch_odir.model import DualNet

    folder.mkdir(parents=True)
    torch.manual_seed(seed)
    state = DualNet(BACKBONE, head=HEAD).state_dict()
    torch.save({"state_dict": state, "config": {"backbone": BACKBONE, "head": HEAD}, "epoch": 0}, folder / "best.pth")
    torch_to_keras_state(build_dual_model(BACKBONE, head=HEAD), state).save(folder / "best.keras")
    return folder / "best.keras", folder / "best.pth"


def shared_models(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(prepared folder of the real samples, best.keras, best.pth), built once per test session."""
    root = tmp_path_factory.getbasetemp() / "session" / "tiny_models"  # kept for the session (conftest.py)
    if not (root / "ready").exists():
        shutil.rmtree(root, ignore_errors=True)
        real_samples_prepared(root / "data")
        _build_models(root / "models")
        (root / "ready").touch()
    return root / "data", root / "models" / "best.keras", root / "models" / "best.pth"


def new_run(run_dir: Path, model: Path, config: TrainConfig) -> Path:
    """A run folder of its own for ``model`` (linked, not copied) with ``config`` as its config.toml."""
    run_dir.mkdir(parents=True)
    save_config(config, run_dir / "config.toml")
    (run_dir / model.name).symlink_to(model)
    return run_dir / model.name


def recording_run(run_dir: Path, model: Path, record: dict) -> Path:
    """A run folder of its own holding a copy of ``model`` that records ``record`` as what it was trained on
    (odir_core.model.provenance), with the tiny models' config.toml."""
    import torch

    from odir_core.model import provenance

    model = model.resolve()  # the shared model, beside the shared data folder
    target = new_run(run_dir, model, run_config(model.parent.parent / "data"))
    target.unlink()  # new_run links the shared model; this one gets a file of its own
    if model.suffix == ".keras":
        shutil.copy(model, target)
        provenance.write_keras(target, record)
    else:
        torch.save({**torch.load(model, weights_only=True), provenance.TORCH_KEY: record}, target)
    return target
