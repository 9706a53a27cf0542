"""The ``scm`` head (cross-eye spatial correlation) in Keras and torch, against its equations and each other.

The fusion itself against a NumPy float64 transcription of the equations in
``odir_core.model.model_spec.CrossEyeCorrelation`` (values and gradients), then on every registered backbone:
the dual model's logits in inference, training-mode logits with BatchNorm batch statistics and dropout
off, and one SGD step of the head (frozen backbone), Keras against torch_odir with the same weights.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import torch

from keras_odir.correlation import CorrelationFusion
from keras_odir.inference import gradients
from keras_odir.weights import keras_to_numpy_state
from odir_core.model.model_spec import BACKBONES
from parity_helpers import float64_error, images, model_pair, nchw, one_head_sgd_step
from torch_odir.model import CorrelationFusion as TorchCorrelationFusion

pytestmark = pytest.mark.backbone_zoo  # not in the tensorflow re-run (test_parity_backends.py)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def reference_fusion(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """The equations, in float64: maps (B, H, W, C) -> (B, 2C)."""
    b, c = left.shape[0], left.shape[-1]
    big_l = left.reshape(b, -1, c).astype(np.float64)
    big_r = right.reshape(b, -1, c).astype(np.float64)
    s = big_l @ big_r.transpose(0, 2, 1) / np.sqrt(c)
    l_agg = _softmax(s) @ big_r
    r_agg = _softmax(s.transpose(0, 2, 1)) @ big_l
    return np.concatenate([(big_l + l_agg).mean(1), (big_r + r_agg).mean(1)], axis=-1)


def test_fusion_matches_its_equations_in_both_frameworks(record):
    rng = np.random.default_rng(0)
    left, right = (rng.standard_normal((2, 3, 4, 16)).astype(np.float32) * 3 for _ in range(2))
    want = reference_fusion(left, right)
    got = keras.ops.convert_to_numpy(CorrelationFusion()(np.concatenate([left, right], axis=-1)))
    record("scm fusion, Keras vs equations", got, want, tol=1e-5)
    with torch.no_grad():
        torch_got = TorchCorrelationFusion()(nchw(left), nchw(right)).numpy()
    record("scm fusion, torch vs equations", torch_got, want, tol=1e-5)
    # a map that attends: one right position far brighter than the rest takes the softmax for every left one
    right_peak = np.zeros_like(right)
    right_peak[:, 1, 2] = 50.0
    left_flat = np.ones_like(left)
    fused = keras.ops.convert_to_numpy(CorrelationFusion()(np.concatenate([left_flat, right_peak], axis=-1)))
    np.testing.assert_allclose(fused[:, :16], 1.0 + 50.0, rtol=1e-5)  # every left position aggregated the peak


def test_fusion_gradients_match_torch(record):
    rng = np.random.default_rng(1)
    left, right = (rng.standard_normal((1, 2, 3, 8)).astype(np.float32) for _ in range(2))
    weights = rng.standard_normal(16).astype(np.float32)
    layer = CorrelationFusion()

    def keras_fn(a, b):
        return keras.ops.sum(keras.ops.multiply(layer(keras.ops.concatenate([a, b], axis=-1))[0],
                                                keras.ops.convert_to_tensor(weights)))

    got = gradients(keras_fn, left, right)
    t_left, t_right = nchw(left).requires_grad_(True), nchw(right).requires_grad_(True)
    value = (TorchCorrelationFusion()(t_left, t_right)[0] * torch.from_numpy(weights)).sum()
    want = [g.permute(0, 2, 3, 1).numpy() for g in torch.autograd.grad(value, (t_left, t_right))]
    for side, g, w in zip(("left", "right"), got, want, strict=True):
        record(f"scm fusion gradient wrt the {side} map", g, w, tol=1e-5)


def _pair(name: str, seed: int, freeze: bool = False):
    return model_pair(name, "scm", seed, freeze)


# every registered backbone but the ViT-L/16s (vit_l_16, retfound: ViT-B/16's layers, deeper and wider, 304 M
# weights; RETFound's maps at 2 blocks: test_parity_retfound.py)
@pytest.mark.parametrize("name", [name for name in BACKBONES if name not in ("vit_l_16", "retfound")])
def test_scm_logits_on_every_backbone(record, name):
    torch_model, keras_model = _pair(name, seed=4)
    left, right = images(2, 64, seed=5), images(2, 64, seed=6)
    for training in (False, True):  # inference, then BatchNorm on batch statistics
        torch_model.train(training)
        with torch.no_grad():
            want = torch_model(nchw(left), nchw(right)).numpy()
        got = keras.ops.convert_to_numpy(keras_model({"left": left, "right": right}, training=training))
        scale = float(np.abs(want).max())
        floor = float64_error(torch_model, (nchw(left), nchw(right)), want, training)
        record(f"{name} scm logits 2x64px {'train-BN' if training else 'inference'} (relative)", got, want,
               relative=True, floor=lambda: floor() / scale)


@pytest.mark.parametrize("name", ["resnet18", "densenet121"])
def test_scm_one_sgd_step_of_the_head(record, name):
    torch_model, keras_model = _pair(name, seed=7, freeze=True)
    keras_loss, torch_loss, before = one_head_sgd_step(torch_model, keras_model)
    record(f"{name} scm loss before the step", keras_loss, torch_loss, tol=1e-5)
    got, want = keras_to_numpy_state(keras_model), torch_model.state_dict()
    for key in ("head.2.weight", "head.2.bias"):
        assert not torch.allclose(want[key], before[key]), "the step changed nothing"
        record(f"{name} scm {key} after one SGD step (relative)", got[key], want[key].numpy(), relative=True)

