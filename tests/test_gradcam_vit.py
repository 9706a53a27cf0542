"""Grad-CAM on a Vision Transformer (the first registered ViT of each key layout: vit_b_16, and RETFound's timm
layout, with 2 blocks, 64 px: a 4 x 4 patch grid) in both packages: the tokens explained on their patch grid, the
same map from Keras as from torch, and why a head on torchvision's class token is explained on the tokens entering
the last block (after it, no patch token reaches the class token: the gradient there is exactly zero). With
RETFound's global pooling every patch token after the last block reaches the features, so the last block's output
(the tokens entering the pooling and fc_norm) is explained, for a head on maps too (which gets them through
fc_norm)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from keras_odir.inference import KerasPredictor
from keras_odir.model import build_dual_model
from keras_odir.weights import torch_to_keras_state
from odir_core.model.families import vit
from odir_core.model.model_spec import BACKBONES
from torch_odir.inference import TorchPredictor
from torch_odir.model import DualNet

SIZE, DEPTH = 64, 2
LAYOUTS = {}  # key layout -> its first registered ViT
for _name, _spec in BACKBONES.items():
    if _spec.family == vit.NAME:
        LAYOUTS.setdefault(_spec.layout, _name)
# the module explained per layout and head: on the class token, on maps
STAGES = {"torchvision": {"v0": "encoder.layers.encoder_layer_0", "mldecoder": "encoder.ln"},
          vit.TIMM: {"v0": "blocks.1", "mldecoder": "blocks.1"}}


def _small(monkeypatch, name: str):
    spec = vit.at_depth(BACKBONES[name], DEPTH)
    monkeypatch.setitem(BACKBONES, name, spec)  # the predictors read the backbone from the weights' keys
    return spec


@pytest.fixture
def small_vit(monkeypatch):
    return _small(monkeypatch, "vit_b_16")


def _predictors(spec, head: str):
    torch.manual_seed(0)
    model = DualNet(spec, head)
    with torch.no_grad():  # a class token and position embeddings that matter
        for key in vit.TOKEN_KEYS[spec.layout]:
            model.backbone.get_parameter(key).normal_(0.0, 0.5)
    keras_model = torch_to_keras_state(build_dual_model(spec, head, image_size=SIZE), model.state_dict())
    return TorchPredictor(model, torch.device("cpu")), KerasPredictor(keras_model)


def _eyes():
    rng = np.random.default_rng(0)
    return tuple(rng.normal(size=(1, SIZE, SIZE, 3)).astype(np.float32) for _ in range(2))


@pytest.mark.parametrize("head", ["v0", "mldecoder"])
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_gradcam_on_the_patch_grid_matches_torch_in_keras(monkeypatch, layout, head):
    spec = _small(monkeypatch, LAYOUTS[layout])
    stage = STAGES[layout][head]
    torch_side, keras_side = _predictors(spec, head)
    for predictor in (torch_side, keras_side):
        assert predictor.gradcam_stages((SIZE, SIZE)) == [(stage, (4, 4))]
    left, right = _eyes()
    expected = np.stack(torch_side.gradcam(left, right, 2))
    maps = np.stack(keras_side.gradcam(left, right, 2))
    assert maps.shape == (2, 4, 4) and expected.max() == pytest.approx(1.0)  # not an empty map
    assert len(np.unique(expected.round(4))) > 3
    np.testing.assert_allclose(maps, expected, atol=1e-3)


def test_a_class_token_head_gets_no_gradient_from_the_last_patch_tokens(small_vit):
    """The reason for the stage above: after the last block each token is normalised on its own and the class
    token is read alone, so a v0 logit's gradient on encoder.ln's patch tokens is zero; on the tokens entering the
    last block it is not."""
    torch_side, _ = _predictors(small_vit, "v0")
    model = torch_side.model
    found = {}
    hooks = [model.backbone.get_submodule(name).register_forward_hook(
        lambda module, inputs, output, name=name: found.setdefault(name, output))
        for name in ("encoder.ln", "encoder.layers.encoder_layer_0")]
    left, right = (torch.from_numpy(x).permute(0, 3, 1, 2) for x in _eyes())
    try:
        logit = model.eval()(left, right)[0, 2]  # both eyes in one backbone pass: one output per hook
    finally:
        for hook in hooks:
            hook.remove()
    last, entering = torch.autograd.grad(logit, [found["encoder.ln"], found["encoder.layers.encoder_layer_0"]])
    assert torch.count_nonzero(last[:, 1:]) == 0 and torch.count_nonzero(last[:, 0]) > 0
    assert torch.count_nonzero(entering[:, 1:]) > 0
