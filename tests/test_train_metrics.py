"""Train metrics of each epoch, in both trainers: from the epoch's training-mode outputs (the
study's way, default) or from a clean inference pass (``--train-metrics clean``)."""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import pandas as pd
import pytest

import keras_odir.train as ktrain
import torch_odir.train as ttrain
from odir_core.data.synthetic import generate
from odir_core.training.config import TrainConfig

TRAINERS = {"keras": ktrain.train, "torch": ttrain.train}
TRAIN_METRICS = ["train_kappa", "train_f1", "train_auc", "train_final_score"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn") / "set", patients=24, size=40, seed=5)


def _train_metrics(trainer, config, run_dir):
    run = TRAINERS[trainer](config.replace(run_dir=str(run_dir)), log=lambda *_: None)
    return pd.read_csv(run / "history.csv")[TRAIN_METRICS].to_numpy()


@pytest.mark.parametrize("trainer", TRAINERS)
@pytest.mark.parametrize("feature_cache", [True, False], ids=["cached", "backbone"])
def test_epoch_outputs_equal_a_clean_pass_when_training_changes_nothing(data, tmp_path, trainer, feature_cache):
    """Frozen backbone, head without dropout, no augmentation and a vanishing learning rate: the
    training-mode outputs of a shuffled epoch are the inference outputs of every training
    patient, so both ways agree; a label/output mix-up or a missing batch would break this."""
    config = TrainConfig(data=str(data), backbone="resnet18", image_size=32, batch_size=5, weights="none",
                         epochs=2, head="v0", lr=1e-12, experiment="m", patience=0, feature_cache=feature_cache)
    epoch = _train_metrics(trainer, config, tmp_path / "epoch")
    clean = _train_metrics(trainer, config.replace(train_metrics="clean"), tmp_path / "clean")
    assert epoch == pytest.approx(clean, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("trainer", TRAINERS)
def test_epoch_metrics_come_from_training_mode_outputs(data, tmp_path, trainer):
    """With dropout 0.5 in the head, training-mode outputs differ from inference outputs."""
    config = TrainConfig(data=str(data), backbone="resnet18", image_size=32, batch_size=5, weights="none",
                         epochs=1, head="v2", lr=1e-12, experiment="m", patience=0)
    epoch = _train_metrics(trainer, config, tmp_path / "epoch")
    clean = _train_metrics(trainer, config.replace(train_metrics="clean"), tmp_path / "clean")
    assert epoch != pytest.approx(clean, rel=1e-3)
