"""SGD with layer-wise learning-rate decay and a per-epoch warm-up + cosine, two epochs of ResNet18 fine-tuned in
each trainer on the tiny synthetic set: the same learning rate each epoch (torch's LambdaLR, read back from the
history) and the same losses. (AdamW with a per-step schedule: ``tests/test_train_vit.py``.)"""

import numpy as np
import pandas as pd
import pytest

import keras_odir.train as ktrain
import torch_odir.train as ttrain
from odir_core.data.synthetic import generate
from training_runs import only_run, tiny_train_args

FLAGS = ("--backbone", "resnet18", "--fine-tune", "--epochs", "2", "--patience", "0", "--lr", "0.01",
         "--weight-decay", "1e-3", "--layer-decay", "0.5", "--scheduler", "warmup_cosine", "--min-lr", "1e-3")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn") / "set", patients=20, size=40, seed=3)


def test_sgd_layer_decay_and_per_epoch_cosine_in_each_trainer(data, tmp_path):
    histories = {}
    for name, module in (("torch", ttrain), ("keras", ktrain)):
        assert module.main(tiny_train_args(data, tmp_path / name, *FLAGS)) == 0
        histories[name] = pd.read_csv(only_run(tmp_path / name) / "history.csv")
    # no warm-up: epoch 0 at lr, epoch 1 half way down the cosine of 2 epochs
    np.testing.assert_allclose(histories["torch"]["lr"], [0.01, 1e-3 + 0.009 * 0.5], rtol=1e-12)
    np.testing.assert_allclose(histories["keras"]["lr"], histories["torch"]["lr"], rtol=1e-7)
    for column in ("train_loss", "val_loss"):
        np.testing.assert_allclose(histories["keras"][column], histories["torch"][column], atol=1e-4, err_msg=column)
