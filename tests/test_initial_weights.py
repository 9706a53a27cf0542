"""Starting weights drawn once in odir_core: torchvision's distributions, the same numbers in both trainers."""

import math

import numpy as np
import pytest
import torch
import torchvision

import keras_odir.train as ktrain
import torch_odir.train as ttrain
from keras_odir.weights import keras_to_numpy_state
from odir_core.model.initial_weights import initial_state
from odir_core.model.model_spec import BACKBONES, DEFAULT_BACKBONE, HEADS, backbone_spec
from odir_core.training.config import TrainConfig
from torch_odir.model import build_head

RESNET50 = backbone_spec("resnet50")


def _one_per_family() -> list[str]:
    """One backbone of each registered family (initialisation rules are per family): the default, then the first
    registered backbone of every other family."""
    chosen = {BACKBONES[DEFAULT_BACKBONE].family: DEFAULT_BACKBONE}
    for name, spec in BACKBONES.items():
        chosen.setdefault(spec.family, name)
    return list(chosen.values())


def _torchvision_state(name: str) -> dict[str, np.ndarray]:
    """A freshly initialised torchvision backbone (classifier dropped), as ``backbone.*`` numpy arrays."""
    spec = backbone_spec(name)
    torch.manual_seed(0)
    model = getattr(torchvision.models, spec.torchvision)(weights=None)
    return {f"backbone.{k}": v.numpy() for k, v in model.state_dict().items()
            if not k.startswith(spec.classifier + ".")}


@pytest.mark.parametrize("name", _one_per_family())
def test_backbone_draws_follow_torchvision_initialisation(name):
    reference = _torchvision_state(name)
    drawn = initial_state({k: v.shape for k, v in reference.items()}, backbone_spec(name), seed=0, draw_backbone=True)
    assert drawn.keys() == reference.keys()
    for key, ours in drawn.items():
        theirs = reference[key]
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype, key
        if theirs.size < 2000 or theirs.std() == 0:  # constants (norm layers, biases, layer scale) and tiny ones
            if theirs.std() == 0:
                np.testing.assert_array_equal(ours, theirs, err_msg=key)
            continue
        assert abs(ours.std() / theirs.std() - 1) < 0.1, (key, ours.std(), theirs.std())
        assert abs(ours.mean()) < 0.1 * theirs.std(), key


def test_head_draws_follow_torch_linear_and_depend_on_the_seed():
    shapes = {"head.0.weight": (128, 4096), "head.0.bias": (128,), "head.3.weight": (8, 64), "head.3.bias": (8,)}
    drawn = initial_state(shapes, RESNET50, seed=3, draw_backbone=True)
    for key, fan_in in (("head.0", 4096), ("head.3", 64)):
        reference = torch.nn.Linear(fan_in, shapes[f"{key}.weight"][0])  # reset_parameters: the bounds below
        bound = 1 / math.sqrt(fan_in)
        for part in ("weight", "bias"):
            ours, theirs = drawn[f"{key}.{part}"], getattr(reference, part).detach().numpy()
            assert np.abs(ours).max() <= bound and np.abs(theirs).max() <= bound
        assert np.abs(drawn[f"{key}.weight"]).max() > 0.95 * bound  # filled up to the bound: uniform, not narrower
        assert abs(drawn[f"{key}.weight"].std() / reference.weight.detach().numpy().std() - 1) < 0.1
    again = initial_state(shapes, RESNET50, seed=3, draw_backbone=False)
    other = initial_state(shapes, RESNET50, seed=4, draw_backbone=True)
    assert all(np.array_equal(again[k], drawn[k]) for k in shapes)
    assert not np.allclose(other["head.0.weight"], drawn["head.0.weight"])


def _both_trainers(config: TrainConfig) -> tuple[dict, dict]:
    keras_state = keras_to_numpy_state(ktrain.build_model(config))
    torch_state = {k: v.numpy() for k, v in ttrain.build_model(config).state_dict().items()
                   if not k.endswith("num_batches_tracked")}
    return keras_state, torch_state


def _assert_same(keras_state, torch_state):
    keras_state = {k: v for k, v in keras_state.items() if not k.endswith("num_batches_tracked")}
    assert keras_state.keys() == torch_state.keys()
    worst = max(float(np.abs(keras_state[k] - torch_state[k]).max()) for k in torch_state)
    assert worst <= 1e-7, worst


def test_both_trainers_start_from_the_same_random_weights():
    config = TrainConfig(image_size=32, head="v2", weights="none", fine_tune=True, seed=5)
    keras_state, torch_state = _both_trainers(config)
    _assert_same(keras_state, torch_state)
    drawn = initial_state({k: v.shape for k, v in torch_state.items()}, RESNET50, 5, draw_backbone=True)
    np.testing.assert_array_equal(torch_state["backbone.layer3.2.conv2.weight"], drawn["backbone.layer3.2.conv2.weight"])


def test_both_trainers_take_a_torchvision_backbone_file_and_draw_the_same_head(tmp_path):
    torch.manual_seed(11)
    backbone = torchvision.models.resnet50(weights=None)  # fc included, as torchvision saves it
    with torch.no_grad():
        backbone.bn1.running_mean.uniform_(-1, 1)  # not an initial value: it must come from the file
    path = tmp_path / "resnet50-backbone.pth"
    torch.save(backbone.state_dict(), path)
    config = TrainConfig(image_size=32, head="v1", weights=str(path), fine_tune=False, seed=2)
    keras_state, torch_state = _both_trainers(config)
    _assert_same(keras_state, torch_state)
    np.testing.assert_array_equal(torch_state["backbone.bn1.running_mean"], backbone.bn1.running_mean.numpy())
    np.testing.assert_array_equal(torch_state["backbone.conv1.weight"], backbone.conv1.weight.detach().numpy())
    head = initial_state({"head.1.weight": (8, 4096), "head.1.bias": (8,)}, RESNET50, 2, draw_backbone=False)
    np.testing.assert_array_equal(torch_state["head.1.weight"], head["head.1.weight"])


def test_mldecoder_head_draws_follow_its_torch_module():
    torch.manual_seed(0)
    module = build_head(HEADS["mldecoder"], 2 * 512)
    reference = {f"head.{k}": v.detach().numpy() for k, v in module.state_dict().items()}
    drawn = initial_state({k: v.shape for k, v in reference.items()}, RESNET50, seed=1, draw_backbone=False)
    assert drawn.keys() == reference.keys() == HEADS["mldecoder"].state_keys
    for key, ours in drawn.items():
        theirs = reference[key]
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype, key
        if theirs.std() == 0:  # LayerNorms, the attention's and the group layer's biases
            np.testing.assert_array_equal(ours, theirs, err_msg=key)
        elif theirs.size >= 2000:
            assert abs(ours.std() / theirs.std() - 1) < 0.1, (key, ours.std(), theirs.std())
            assert abs(ours.mean()) < 0.1 * theirs.std(), key


def test_both_trainers_start_an_mldecoder_head_from_the_same_weights():
    config = TrainConfig(image_size=32, backbone="resnet18", head="mldecoder", weights="none", fine_tune=True, seed=6)
    _assert_same(*_both_trainers(config))
