"""One epoch of ``--backbone vit_b_16`` in each trainer on the tiny synthetic set (32 px: the position embeddings
resampled from 14 x 14 to 2 x 2), the whole model trained. The registered spec is swapped for one of 2 encoder
blocks (its layers are the same code at every depth) to keep the test fast; both trainers start from the same
weights and see the same batches, so their epochs agree."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

import keras_odir.train as ktrain
import torch_odir.train as ttrain
from odir_core.data.synthetic import generate
from odir_core.model.families import vit
from odir_core.model.model_spec import BACKBONES
from odir_core.training.config_files import load_config
from training_runs import only_run, tiny_train_args


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn") / "set", patients=20, size=40, seed=3)


def test_one_epoch_in_each_trainer(data, tmp_path, monkeypatch):
    spec = BACKBONES["vit_b_16"]
    monkeypatch.setitem(BACKBONES, "vit_b_16", dataclasses.replace(spec, blocks=(2,), state_keys=vit.state_keys(2)))
    histories = {}
    for name, module in (("torch", ttrain), ("keras", ktrain)):
        args = tiny_train_args(data, tmp_path / name, "--backbone", "vit_b_16", "--epochs", "1", "--seed", "1")
        assert module.main(args) == 0
        run = only_run(tmp_path / name)
        assert load_config(run / "config.toml").backbone == "vit_b_16"
        assert (run / "finished.json").is_file()
        histories[name] = pd.read_csv(run / "history.csv")
    for history in histories.values():
        assert len(history) == 1 and np.isfinite(history[["train_loss", "val_loss"]].to_numpy()).all()
    for column in ("train_loss", "val_loss"):
        assert histories["keras"][column][0] == pytest.approx(histories["torch"][column][0], abs=1e-3), column
