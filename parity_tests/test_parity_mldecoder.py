"""The ``mldecoder`` head (ML-Decoder) in Keras and torch, against each other with the same weights (made in
torch, converted): the dual model's logits in inference and in training mode (BatchNorm batch statistics,
dropout off), one SGD step of the head (frozen backbone; its update, -lr x the gradient, per tensor), the
keras -> torch -> keras round trip, and the logits on every registered backbone (``backbone_zoo``)."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import torch

from keras_odir.model import build_dual_model
from keras_odir.weights import keras_to_numpy_state, keras_to_torch_state, torch_to_keras_state
from odir_core.model.model_spec import BACKBONES, HEADS
from parity_helpers import float64_error, images, model_pair, nchw, one_head_sgd_step
from torch_odir.model import DualNet


def _pair(name: str, seed: int, freeze: bool = False):
    return model_pair(name, "mldecoder", seed, freeze)


def _logits(record, name: str, seed: int):
    torch_model, keras_model = _pair(name, seed=seed)
    left, right = images(2, 64, seed=seed + 1), images(2, 64, seed=seed + 2)
    for training in (False, True):  # inference, then BatchNorm on batch statistics
        torch_model.train(training)
        with torch.no_grad():
            want = torch_model(nchw(left), nchw(right)).numpy()
        got = keras.ops.convert_to_numpy(keras_model({"left": left, "right": right}, training=training))
        floor = float64_error(torch_model, (nchw(left), nchw(right)), want, training)
        record(f"{name} mldecoder logits 2x64px {'train-BN' if training else 'inference'}", got, want, floor=floor)


def test_mldecoder_logits(record):
    _logits(record, "resnet18", seed=4)


@pytest.mark.backbone_zoo
# the ViT-L/16s left out (vit_l_16, retfound: ViT-B/16's layers, deeper and wider, 304 M weights; RETFound's
# maps at 2 blocks: test_parity_retfound.py)
@pytest.mark.parametrize("name", [name for name in BACKBONES if name not in ("resnet18", "vit_l_16", "retfound")])
def test_mldecoder_logits_on_every_backbone(record, name):
    _logits(record, name, seed=11)


def test_mldecoder_one_sgd_step_of_the_head(record):
    torch_model, keras_model = _pair("resnet18", seed=7, freeze=True)
    keras_loss, torch_loss, before = one_head_sgd_step(torch_model, keras_model)
    record("resnet18 mldecoder loss before the step", keras_loss, torch_loss, tol=1e-5)
    got, want = keras_to_numpy_state(keras_model), torch_model.state_dict()
    assert {k for k in got if k.startswith("head.")} == HEADS["mldecoder"].state_keys
    for key in sorted(HEADS["mldecoder"].state_keys):
        assert not torch.allclose(want[key], before[key]), f"the step changed nothing in {key}"
        start = before[key].numpy()  # the step itself: -lr x the gradient (momentum starts at the gradient)
        record(f"resnet18 mldecoder {key} SGD update", got[key] - start, want[key].numpy() - start)


def test_mldecoder_keras_torch_keras_round_trip_is_exact():
    keras.utils.set_random_seed(3)
    keras_model = build_dual_model("resnet18", "mldecoder")
    torch_model = DualNet("resnet18", "mldecoder")
    torch_model.load_state_dict(keras_to_torch_state(keras_model))
    again = torch_to_keras_state(build_dual_model("resnet18", "mldecoder"), torch_model.state_dict())
    first, second = keras_to_numpy_state(keras_model), keras_to_numpy_state(again)
    assert first.keys() == second.keys()
    for key in first:
        np.testing.assert_array_equal(second[key], first[key], err_msg=key)
