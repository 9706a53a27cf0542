"""experiments/backbones/: experiment 15's recipe with another registered backbone, one file each (not every
registered backbone needs one)."""

from pathlib import Path

import pytest

from odir_core.model.model_spec import BACKBONES, DEFAULT_BACKBONE
from odir_core.training.config_files import load_config

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
CONFIGS = sorted((EXPERIMENTS / "backbones").glob("*.toml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[path.stem for path in CONFIGS])
def test_backbone_config_is_experiment_15_with_another_registered_backbone(path):
    assert path.stem in BACKBONES and path.stem != DEFAULT_BACKBONE
    base = load_config(EXPERIMENTS / "experiment_15.toml")
    assert load_config(path) == base.replace(experiment=f"experiment_15_{path.stem}", backbone=path.stem)
    assert "experiment 15" in path.read_text().splitlines()[0]
