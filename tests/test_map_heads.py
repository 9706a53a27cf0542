"""The heads on feature maps (``scm``, ``mldecoder``) end to end: both trainers train them, their checkpoints
convert and predict alike, and they are never trained on cached pooled features."""

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

MAP_HEADS = [name for name, spec in HEADS.items() if spec.uses_maps]
HEAD_KEYS = {  # keys each head holds
    "scm": {"head.2.weight", "head.2.bias"},  # its one Linear, after the correlation and the Dropout
    "mldecoder": {f"head.0.{name}" for name in ("embed.weight", "query_embed", "eye_embed", "attn.in_proj_weight",
                                                "attn.out_proj.weight", "group_weight", "group_bias")},
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn") / "set", patients=16, size=72, seed=5)


@pytest.mark.parametrize("head", MAP_HEADS)
def test_frozen_map_head_is_not_trained_on_cached_features(head):
    assert TrainConfig(head="v0", fine_tune=False, augment="none").uses_feature_cache
    assert not TrainConfig(head=head, fine_tune=False, augment="none").uses_feature_cache


@pytest.mark.parametrize("head", MAP_HEADS)
def test_torch_trained_map_head_converts_and_predicts_the_same_in_keras(data, tmp_path, capsys, head):
    flags = ("--head", head, "--backbone", "resnet18", "--image-size", "64", "--epochs", "1", "--fine-tune")
    args = tiny_train_args(data, tmp_path / "runs", *flags)  # the later --image-size wins
    assert ttrain.main(args) == 0
    run = only_run(tmp_path / "runs")
    state = torch.load(run / "best.pth", weights_only=True)["state_dict"]
    assert {k for k in state if k.startswith("head.")} == HEADS[head].state_keys >= HEAD_KEYS.get(head, set())
    convert_file(run / "best.pth", tmp_path / "best.keras")
    config = load_config(run / "config.toml")
    pair = [model_input(prepare_photo(p, config), config)[None] for p in sorted((data / "images").iterdir())[:2]]
    want = torch_predictor(run / "best.pth").predict(*pair)
    got = keras_predictor(tmp_path / "best.keras").predict(*pair)
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("head,epochs", [("scm", "2"), ("mldecoder", "1")])
def test_keras_trains_map_head_with_a_frozen_backbone(data, tmp_path, capsys, head, epochs):
    args = tiny_train_args(data, tmp_path, "--head", head, "--backbone", "resnet18", "--epochs", epochs)
    assert ktrain.main(args) == 0
    out = capsys.readouterr().out
    assert "computing backbone features once" not in out
    assert (only_run(tmp_path) / "finished.json").is_file()
