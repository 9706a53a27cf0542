"""The registered ResNets (ResNet-50 aside: test_parity_forward.py) and DenseNets in Keras against
torchvision's own models, same weights, 64 px.

Per backbone: pooled features in inference and with training-mode BatchNorm (relative to their
largest value, within 1e-4 or twice torch's own float32-vs-float64 error), BatchNorm running
statistics after one training forward (within 1e-3 relative, or twice torch's own float32 error), the dual model's logits against torch_odir's DualNet, the
Keras -> torch state round trip (exact), and a torchvision-format checkpoint file written here
loaded by both frameworks' ``build_backbone(weights=PATH)``.
"""

from __future__ import annotations

import copy
import re

import keras
import numpy as np
import pytest
import torch
import torchvision

from keras_odir.model import build_backbone, build_dual_model
from keras_odir.weights import keras_to_numpy_state, torch_to_keras_state
from odir_core.model.model_spec import BACKBONES as REGISTERED
from odir_core.model.model_spec import DEFAULT_BACKBONE, backbone_spec, infer_backbone
from parity_helpers import calibrated_backbone, float64_error, images, nchw
from torch_odir.model import DualNet
from torch_odir.model import build_backbone as torch_backbone

pytestmark = pytest.mark.backbone_zoo  # not in the tensorflow re-run (test_parity_backends.py)

FAMILIES = ("resnet", "densenet")  # the others: test_parity_backbones.py
BACKBONES = tuple(name for name, spec in REGISTERED.items() if spec.family in FAMILIES and name != DEFAULT_BACKBONE)


@pytest.fixture(scope="module")
def references():
    return {name: calibrated_backbone(name, seed) for seed, name in enumerate(BACKBONES)}


@pytest.mark.parametrize("training", [False, True], ids=["inference", "train-bn"])
@pytest.mark.parametrize("name", BACKBONES)
def test_features_match_torchvision(references, record, name, training):
    reference = copy.deepcopy(references[name]).train(training)
    keras_backbone = torch_to_keras_state(build_backbone(name), reference.state_dict())
    x = images(2, 64, seed=7)
    with torch.no_grad():
        want = reference(nchw(x)).numpy()
    got = keras.ops.convert_to_numpy(keras_backbone(x, training=training))
    assert got.shape == (2, backbone_spec(name).features)
    scale = float(np.abs(want).max())
    record(f"{name} features 2x64px {'train-BN' if training else 'inference'} (relative)", got, want,
           relative=True, floor=lambda: float64_error(reference, (nchw(x),), want, training)() / scale)
    if training:  # BatchNorm running statistics after the training forward, torch's unbiased variance
        got_state, want_state = keras_to_numpy_state(keras_backbone), reference.state_dict()
        keys = [k for k in want_state if k.endswith(("running_mean", "running_var"))]
        worst = max(keys, key=lambda k: np.abs(got_state[k] - want_state[k].numpy()).max()
                    / np.abs(want_state[k].numpy()).max())
        record(f"{name} BN running stats after 1 train forward (worst: {worst}, relative)", got_state[worst],
               want_state[worst].numpy(), tol=1e-3, relative=True,
               floor=lambda: _running_stat_error(references[name], x, worst, want_state[worst].numpy()))


def _running_stat_error(reference, x, key, want) -> float:
    """torch's own float32 error on BatchNorm statistic ``key`` after one training forward of ``x`` (its float32
    value ``want`` against the float64 model's), relative to max |want|: deeper networks carry more rounding."""
    exact = copy.deepcopy(reference).double().train(True)
    with torch.no_grad():
        exact(nchw(x).double())
    return float(np.abs(exact.state_dict()[key].numpy() - want).max() / np.abs(want).max())


@pytest.mark.parametrize("name", BACKBONES)
def test_dual_model_logits_and_exact_round_trip(references, record, name):
    torch.manual_seed(3)
    torch_model = DualNet(name, "v0")
    torch_model.backbone.load_state_dict(references[name].state_dict())
    torch_model.eval()
    keras_model = torch_to_keras_state(build_dual_model(name, "v0"), torch_model.state_dict())
    left, right = images(2, 64, seed=1), images(2, 64, seed=2)
    with torch.no_grad():
        want = torch_model(nchw(left), nchw(right)).numpy()
    got = keras.ops.convert_to_numpy(keras_model({"left": left, "right": right}, training=False))
    record(f"{name} dual v0 logits 2x64px inference", got, want,
           floor=float64_error(torch_model, (nchw(left), nchw(right)), want, training=False))
    back = keras_to_numpy_state(keras_model)
    state = torch_model.state_dict()
    assert set(back) == set(state)
    for key, value in state.items():
        if not key.endswith("num_batches_tracked"):
            np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)


def test_registered_backbones_are_told_apart_by_their_keys():
    for name in BACKBONES:
        keys = torchvision.models.get_model(name).state_dict().keys()
        classifier = backbone_spec(name).classifier + "."
        assert infer_backbone(k for k in keys if not k.startswith(classifier)).name == name


@pytest.mark.parametrize("name", BACKBONES)
def test_torchvision_checkpoint_file_loads_in_both_frameworks(tmp_path, name):
    """A checkpoint file as torchvision publishes it (classifier included; DenseNet with the key names of
    its first release, ``norm.1``, which torchvision renames on loading) gives the same features."""
    torch.manual_seed(9)
    full = torchvision.models.get_model(name)
    state = full.state_dict()
    if name.startswith("densenet"):
        state = {re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k): v for k, v in state.items()}
        assert any(".norm.1." in k for k in state) and any(".conv.2." in k for k in state)
    path = tmp_path / next(iter(backbone_spec(name).imagenet_checkpoints))
    torch.save(state, path)
    reference = torch_backbone(name, weights=path).eval()
    keras_backbone = build_backbone(name, weights=path)
    x = images(1, 64, seed=4)
    with torch.no_grad():
        want = reference(nchw(x)).numpy()
        setattr(full, backbone_spec(name).classifier, torch.nn.Identity())
        np.testing.assert_allclose(full.eval()(nchw(x)).numpy(), want, rtol=0, atol=1e-6)
    got = keras.ops.convert_to_numpy(keras_backbone(x, training=False))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * float(np.abs(want).max()))
