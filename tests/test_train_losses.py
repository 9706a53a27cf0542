"""One epoch of ``--loss focal`` and ``--loss asl`` in each trainer, on the tiny synthetic set of the trainer tests
(ResNet18 frozen at 32 px: the features are computed once and the epoch trains the head on them): the run finishes
with a finite training loss, its config.toml keeps the loss and its parameters, and its val_loss is that loss
(without class weights) of the validation logits the epoch's record was computed from."""

import keras_odir.callbacks as kcallbacks
import keras_odir.train as ktrain
import numpy as np
import pandas as pd
import pytest

import torch_odir.train as ttrain
from odir_core.data.synthetic import generate
from odir_core.training.config_files import load_config
from odir_core.training.losses import bce_with_logits, numpy_loss
from training_runs import only_run, tiny_train_args

# each trainer's module, and the module where it computes an epoch's record from the epoch's outputs
TRAINERS = {"torch": (ttrain, ttrain), "keras": (ktrain, kcallbacks)}
LOSS_FLAGS = {
    "focal": ["--loss", "focal", "--focal-gamma", "1.5", "--focal-alpha", "0.4"],
    "asl": ["--loss", "asl", "--asl-gamma-neg", "3", "--asl-gamma-pos", "1", "--asl-clip", "0.1"],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn") / "set", patients=20, size=40, seed=3)


@pytest.mark.parametrize("loss", sorted(LOSS_FLAGS))
@pytest.mark.parametrize("trainer", sorted(TRAINERS))
def test_one_epoch_with_the_loss(data, tmp_path, monkeypatch, trainer, loss):
    module, where = TRAINERS[trainer]
    record, seen = where.epoch_record, []

    def keeping_the_validation_logits(train_loss, outputs, y_val, *rest):
        def kept():
            y, train_logits, val_logits = outputs()
            seen.append((val_logits, y_val))
            return y, train_logits, val_logits
        return record(train_loss, kept, y_val, *rest)

    monkeypatch.setattr(where, "epoch_record", keeping_the_validation_logits)
    args = tiny_train_args(data, tmp_path, "--backbone", "resnet18", "--no-fine-tune", "--epochs", "1",
                           *LOSS_FLAGS[loss])
    assert module.main(args) == 0
    run = only_run(tmp_path)
    config = load_config(run / "config.toml")
    assert config.loss == loss
    history = pd.read_csv(run / "history.csv")
    assert len(history) == 1 and np.isfinite(history["train_loss"]).all()
    (val_logits, y_val), = seen
    want = numpy_loss(config)(val_logits, y_val)
    assert history["val_loss"][0] == pytest.approx(want, rel=1e-9)
    assert abs(want - bce_with_logits(val_logits, y_val)) > 1e-3  # not the BCE
