"""The ``scm`` head end to end: both trainers train it, its checkpoints convert and predict alike, and it is
never trained on cached pooled features."""

import numpy as np
import pytest
import torch

import keras_odir  # noqa: F401  (torch backend unless KERAS_BACKEND says otherwise)
import keras_odir.train as ktrain
import torch_odir.train as ttrain
from keras_odir.convert import convert_file
from keras_odir.inference import load_predictor as keras_predictor
from odir_core.data.synthetic import generate
from odir_core.evaluation.inference import model_input, prepare_photo
from odir_core.model.model_spec import HEADS
from odir_core.training.config import TrainConfig
from odir_core.training.config_files import load_config
from torch_odir.inference import load_predictor as torch_predictor
from training_runs import only_run, tiny_train_args


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn") / "set", patients=16, size=72, seed=5)


def test_frozen_scm_is_not_trained_on_cached_features():
    assert TrainConfig(head="v0", fine_tune=False, augment="none").uses_feature_cache
    assert not TrainConfig(head="scm", fine_tune=False, augment="none").uses_feature_cache


def test_torch_trained_scm_converts_and_predicts_the_same_in_keras(data, tmp_path, capsys):
    flags = ("--head", "scm", "--backbone", "resnet18", "--image-size", "64", "--epochs", "1", "--fine-tune")
    args = tiny_train_args(data, tmp_path / "runs", *flags)  # the later --image-size wins
    assert ttrain.main(args) == 0
    run = only_run(tmp_path / "runs")
    state = torch.load(run / "best.pth", weights_only=True)["state_dict"]
    assert {k for k in state if k.startswith("head.")} == HEADS["scm"].state_keys == {"head.2.weight", "head.2.bias"}
    convert_file(run / "best.pth", tmp_path / "best.keras")
    config = load_config(run / "config.toml")
    pair = [model_input(prepare_photo(p, config), config)[None] for p in sorted((data / "images").iterdir())[:2]]
    want = torch_predictor(run / "best.pth").predict(*pair)
    got = keras_predictor(tmp_path / "best.keras").predict(*pair)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_keras_trains_scm_with_a_frozen_backbone(data, tmp_path, capsys):
    args = tiny_train_args(data, tmp_path, "--head", "scm", "--backbone", "resnet18", "--epochs", "2")
    assert ktrain.main(args) == 0
    out = capsys.readouterr().out
    assert "computing backbone features once" not in out
    assert (only_run(tmp_path) / "finished.json").is_file()
