"""experiments/backbones/: experiment 15's recipe with each registered backbone besides the study's ResNet50."""

from pathlib import Path

import pytest

from odir_core.model.model_spec import BACKBONES, DEFAULT_BACKBONE
from odir_core.training.config import load_config

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def test_one_config_per_registered_backbone():
    assert sorted(p.stem for p in (EXPERIMENTS / "backbones").glob("*.toml")) == sorted(
        name for name in BACKBONES if name != DEFAULT_BACKBONE)


@pytest.mark.parametrize("name", [n for n in BACKBONES if n != DEFAULT_BACKBONE])
def test_backbone_config_is_experiment_15_with_another_backbone(name):
    base = load_config(EXPERIMENTS / "experiment_15.toml")
    path = EXPERIMENTS / "backbones" / f"{name}.toml"
    assert load_config(path) == base.replace(experiment=f"experiment_15_{name}", backbone=name)
    assert "experiment 15" in path.read_text().splitlines()[0]
