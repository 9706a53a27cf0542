"""Test helpers: a prepared folder of the real sample photographs and run folders holding random-weight models
saved the way the training CLIs save them (config.toml beside best.keras / best.pth)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from odir_core.annotations import COLUMNS, write_annotations
from odir_core.config import TrainConfig, save_config
from odir_core.labels import LABELS

REFERENCE = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
REAL_SAMPLES = REFERENCE / "real_samples"


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


def run_config(data: Path, head: str = "v0", image_size: int = 64, crop_size: int = 56) -> TrainConfig:
    return TrainConfig(data=str(data), head=head, image_size=image_size, crop_size=crop_size, weights="none")


def torch_run(run_dir: Path, config: TrainConfig, seed: int = 0) -> Path:
    """run_dir/best.pth: a random-weight DualResNet50 state_dict, with config.toml beside it."""
    import torch

    from torch_odir.model import DualResNet50

    torch.manual_seed(seed)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, run_dir / "config.toml")
    path = run_dir / "best.pth"
    torch.save(DualResNet50(head=config.head).state_dict(), path)
    return path


def paired_runs(root: Path, config: TrainConfig, seed: int = 0) -> tuple[Path, Path]:
    """root/keras/best.keras and root/torch/best.pth holding the same random weights (converted), each with config.toml."""
    import torch

    from keras_odir.convert import torch_to_keras_state
    from keras_odir.model import build_dual_model

    torch_path = torch_run(root / "torch", config, seed)
    keras_dir = root / "keras"
    keras_dir.mkdir(parents=True, exist_ok=True)
    save_config(config, keras_dir / "config.toml")
    model = torch_to_keras_state(build_dual_model(head=config.head), torch.load(torch_path, weights_only=True))
    model.save(keras_dir / "best.keras")
    return keras_dir / "best.keras", torch_path
