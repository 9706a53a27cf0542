"""One epoch of ``--backbone vit_b_16`` in each trainer on the tiny synthetic set (32 px: the position embeddings
resampled from 14 x 14 to 2 x 2), the whole model trained. The registered spec is swapped for one of 2 encoder
blocks (its layers are the same code at every depth) to keep the test fast; both trainers start from the same
weights and see the same batches, so their epochs agree; also with the fine-tuning recipe (AdamW, layer-wise
learning-rate decay, per-step warm-up and cosine)."""

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
from keras_odir.weights import weight_table
from odir_core.training.config import TrainConfig
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


@pytest.fixture
def small_vit(monkeypatch):
    """vit_b_16 with 2 encoder blocks in the registry (depths 0..3 for layer decay)."""
    spec = dataclasses.replace(BACKBONES["vit_b_16"], blocks=(2,), state_keys=vit.state_keys(2))
    monkeypatch.setitem(BACKBONES, "vit_b_16", spec)
    return spec


RECIPE = ("--backbone", "vit_b_16", "--fine-tune", "--epochs", "2", "--seed", "1", "--optimizer", "adamw",
          "--weight-decay", "0.05", "--layer-decay", "0.65", "--scheduler", "warmup_cosine", "--warmup-epochs", "1",
          "--schedule-step", "step", "--min-lr", "1e-5", "--lr", "0.002")


def test_fine_tuning_recipe_in_each_trainer(data, tmp_path, small_vit):
    """AdamW, layer decay 0.65 and a per-step warm-up + cosine, two epochs in each trainer: the same losses and the
    same learning rate of each epoch's last step."""
    histories = {}
    for name, module in (("torch", ttrain), ("keras", ktrain)):
        assert module.main(tiny_train_args(data, tmp_path / name, *RECIPE)) == 0
        histories[name] = pd.read_csv(only_run(tmp_path / name) / "history.csv")
    steps = 2  # 16 training patients in batches of 8
    schedule = load_config(only_run(tmp_path / "torch") / "config.toml").schedule(steps)
    np.testing.assert_allclose(histories["torch"]["lr"], [schedule.lr_at(1), schedule.lr_at(3)], rtol=1e-12)
    np.testing.assert_allclose(histories["keras"]["lr"], histories["torch"]["lr"], rtol=1e-7)
    for column in ("train_loss", "val_loss"):
        np.testing.assert_allclose(histories["keras"][column], histories["torch"][column], atol=1e-4, err_msg=column)


def test_both_trainers_group_the_weights_alike(small_vit):
    """Each weight's learning-rate scale and weight decay in torch_odir's param groups and keras_odir's optimizer."""
    config = TrainConfig(backbone="vit_b_16", fine_tune=True, weights="none", image_size=32, optimizer="adamw",
                         layer_decay=0.5, weight_decay=0.05)
    model = ttrain.build_model(config)
    names = {id(p): key for key, p in model.named_parameters()}
    torch_groups = {names[id(p)]: (group["lr"] / config.lr, group["weight_decay"] > 0)
                    for group in ttrain.make_optimizer(config, model).param_groups for p in group["params"]}
    keras_model = ktrain.build_model(config)
    keys = {id(variable): key for key, (variable, _) in weight_table(keras_model).items()}
    keras_groups = {keys[id(variable)]: (scale, decays) for variable, scale, decays in
                    ktrain.weight_groups(config, keras_model, keras_model.trainable_variables)}
    assert keras_groups.keys() == torch_groups.keys()
    for key, (scale, decays) in torch_groups.items():
        assert keras_groups[key][0] == pytest.approx(scale, rel=1e-12) and keras_groups[key][1] == decays, key
    assert torch_groups["backbone.conv_proj.weight"] == (0.5 ** 3, True)
    assert torch_groups["backbone.class_token"] == (0.5 ** 3, False)
    assert torch_groups["backbone.encoder.layers.encoder_layer_1.mlp.0.weight"] == (0.5, True)
    assert torch_groups["backbone.encoder.ln.bias"] == (1.0, False) and torch_groups["head.0.weight"] == (1.0, True)
