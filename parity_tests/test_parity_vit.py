"""The Vision Transformers (``vit_b_16``; ``vit_l_16`` for its layout) in Keras against torch, same weights.

Checked at a reduced depth (2 encoder blocks: the registered spec with ``blocks=(2,)``; every block is the same
code), so the suite stays fast on every backend: torch_odir's backbone equals torchvision's own
VisionTransformer at 224 px; the Keras features match torch's at 224 px and at 32 and 64 px (position
embeddings resampled to the smaller grid) in inference and training mode, relative to their largest value
within 1e-4 or twice torch's own float32-vs-float64 error; the dual model's logits, an exact state round trip
and every weight after one SGD step of the whole model (the contract's 1e-4 relative); Keras' weight table
holds torch_odir's keys and shapes for every registered ViT (RETFound's timm layout too; its parity:
test_parity_retfound.py); fresh Keras weights are drawn as torchvision draws them; a saved backbone reloads.
"""

from __future__ import annotations

import keras
import numpy as np
import pytest
import torch
from torchvision.models.vision_transformer import VisionTransformer as TorchvisionViT

from keras_odir.model import build_backbone, build_dual_model
from keras_odir.weights import keras_to_numpy_state, torch_to_keras_state, weight_table
from odir_core.model.backbone import BackboneSpec
from odir_core.model.families import vit
from odir_core.model.model_spec import BACKBONES
from odir_core.training.class_weights import pos_weight_from_labels
from parity_helpers import assert_initialised_alike, float64_error, images, nchw, trained_looking_vit
from test_training_parity import SCHEDULES, STEP_TOL, compare_states, keras_fit, labels, torch_fit
from torch_odir.model import DualNet
from torch_odir.model import build_backbone as torch_backbone

DEPTH = 2
VITS = [name for name, spec in BACKBONES.items() if spec.family == vit.NAME]
CHECKED = "vit_b_16"  # the one whose numbers are compared
TORCH_BACKEND = keras.backend.backend() == "torch"


def small(name: str) -> BackboneSpec:
    """Registered ViT ``name`` with DEPTH encoder blocks."""
    return vit.at_depth(BACKBONES[name], DEPTH)


def _torchvision(spec) -> TorchvisionViT:
    """torchvision's own VisionTransformer of ``spec`` (224 px only), its classifier replaced by Identity."""
    model = TorchvisionViT(image_size=spec.image_size, patch_size=spec.patch_size, num_layers=spec.blocks[0],
                           num_heads=spec.heads, hidden_dim=spec.features, mlp_dim=spec.mlp_dim)
    model.heads.head = torch.nn.Identity()
    return model




@pytest.fixture(scope="module")
def pair():
    """(spec, torch_odir backbone, its state) of the checked ViT at DEPTH, trained-looking weights."""
    spec = small(CHECKED)
    model = trained_looking_vit(torch_backbone(spec), vit.TOKEN_KEYS[spec.layout]).eval()
    return spec, model, model.state_dict()


def test_torch_backbone_is_torchvisions_at_its_size(pair):
    """At the size the position embeddings are for, torch_odir's ViT is torchvision's VisionTransformer: the same
    keys (the spec's) and the same features, inference and training mode."""
    spec, model, state = pair
    reference = _torchvision(spec)
    reference.load_state_dict(state)
    assert set(state) == spec.state_keys
    x = nchw(images(2, spec.image_size, seed=1))
    for training in (False, True):
        with torch.no_grad():
            torch.testing.assert_close(model.train(training)(x), reference.train(training)(x), rtol=0, atol=1e-6)
    model.eval()


@pytest.mark.parametrize("size", [224, 32, 64])
@pytest.mark.parametrize("training", [False, True], ids=["inference", "train"])
def test_features_match_torch(pair, record, size, training):
    spec, model, state = pair
    keras_model = torch_to_keras_state(build_backbone(spec, (size, size, 3)), state)
    x = images(2, size, seed=2)
    reference = model.train(training)
    with torch.no_grad():
        want = reference(nchw(x)).numpy()
    got = keras.ops.convert_to_numpy(keras_model(x, training=training))
    model.eval()
    scale = float(np.abs(want).max())
    error = float64_error(model, (nchw(x),), want, training)
    record(f"{CHECKED} depth {DEPTH} features 2x{size}px {'train' if training else 'inference'} (relative)", got,
           want, relative=True, floor=lambda: error() / scale)
    assert got.shape == (2, spec.features)


@pytest.mark.skipif(not TORCH_BACKEND, reason="channels_first is checked on the torch backend")
def test_channels_first_features(pair, record):
    spec, model, state = pair
    keras_model = torch_to_keras_state(build_backbone(spec, (3, 32, 32), data_format="channels_first"), state)
    x = images(2, 32, seed=3, channels_first=True)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    record(f"{CHECKED} depth {DEPTH} features channels_first 2x32px (relative)",
           keras.ops.convert_to_numpy(keras_model(x, training=False)), want, relative=True)


def test_dual_model_logits_round_trip_and_one_sgd_step(pair, record):
    """torch_odir's DualNet (head v1, backbone trained) and the Keras dual model with its state: logits, an exact
    state round trip, and every weight after one SGD step of the whole model."""
    spec, _, state = pair
    torch.manual_seed(3)
    torch_model = DualNet(spec, "v1")
    torch_model.backbone.load_state_dict(state)
    torch_model.head[0].p = 0.0  # dropout off: the same step in both
    dual_state = torch_model.state_dict()
    keras_model = torch_to_keras_state(build_dual_model(spec, "v1", image_size=32), dual_state)
    keras_model.get_layer("head").get_layer("head_0").rate = 0.0
    back = keras_to_numpy_state(keras_model)
    assert set(back) == set(dual_state)
    for key, value in dual_state.items():
        np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)
    left, right = images(2, 32, seed=4), images(2, 32, seed=5)
    inputs = (nchw(left), nchw(right))
    with torch.no_grad():
        want = torch_model.eval()(*inputs).numpy()
    got = keras.ops.convert_to_numpy(keras_model({"left": left, "right": right}, training=False))
    record(f"{CHECKED} depth {DEPTH} dual v1 logits 2x32px", got, want,
           floor=float64_error(torch_model, inputs, want, training=False))
    y = labels(2, seed=6)
    schedule, pos_weight = SCHEDULES["none"](0.05), pos_weight_from_labels(y)
    torch_fit(torch_model, list(inputs), y, schedule, pos_weight, 1)
    keras_fit(keras_model, {"left": left, "right": right}, y, schedule, pos_weight, 1)
    compare_states(record, f"{CHECKED} depth {DEPTH} dual v1 one SGD step", keras_model, torch_model, tol=STEP_TOL)


@pytest.mark.parametrize("name", VITS)
def test_keras_weights_have_torchs_keys_and_shapes(name):
    """Keras' weight table of every registered ViT (at DEPTH blocks) is the state_dict of torch_odir's backbone
    (torchvision's VisionTransformer, or timm's for RETFound's layout): keys and shapes."""
    spec = small(name)
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in torch_backbone(spec).state_dict().items()}
    table = weight_table(build_backbone(spec, (32, 32, 3)))
    assert {key: _torch_shape(variable, kind) for key, (variable, kind) in table.items()} == want


def _torch_shape(variable, kind: str) -> tuple[int, ...]:
    """The torch shape of a Keras variable of ``kind`` (a conv kernel HWIO -> OIHW, a dense kernel transposed)."""
    shape = tuple(variable.shape)
    if kind == "conv":
        return (shape[3], shape[2], shape[0], shape[1])
    return shape[::-1] if kind == "dense" else shape


@pytest.mark.skipif(not TORCH_BACKEND, reason="initialisation is checked on the torch backend")
def test_initialisation_as_torchvision():
    """Fresh Keras weights drawn as torchvision's constructor draws them: constants equal; random tensors of
    n >= 1000 values with the same mean and standard deviation within 6 standard errors."""
    spec = small(CHECKED)
    torch.manual_seed(0)
    want = _torchvision(spec).state_dict()
    keras.utils.set_random_seed(0)
    got = keras_to_numpy_state(build_backbone(spec, (32, 32, 3)))
    assert_initialised_alike(want, got)


@pytest.mark.skipif(not TORCH_BACKEND, reason="saving is checked on the torch backend")
def test_saved_backbone_reloads(pair, tmp_path):
    spec, _, state = pair
    model = torch_to_keras_state(build_backbone(spec, (32, 32, 3)), state)
    model.save(tmp_path / "backbone.keras")
    restored = keras.saving.load_model(tmp_path / "backbone.keras")
    x = images(1, 32, seed=7)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(restored(x, training=False)),
                                  keras.ops.convert_to_numpy(model(x, training=False)))
