"""keras_odir.folding: BatchNorm folded into the preceding conv gives the unfolded model's inference outputs.

The reference is the unfolded model itself, with random BatchNorm statistics and affine weights (a fold that
mixed up channels, the epsilon, the bias or the depthwise layout would show). Tolerance (float32):
|folded - unfolded| <= 1e-5 * max(1, max|unfolded|) on the logits.
"""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from keras_odir.folding import fold_batchnorm
from keras_odir.layers import TorchBatchNormalization
from keras_odir.model import build_dual_model
from keras_odir.parts import dual_parts
from odir_core.model.model_spec import BACKBONES

RTOL = 1e-5
SIZE = 32


def _foldable(backbone: str) -> int:
    """BatchNorms that take a convolution's output in torchvision's network ``backbone`` (every one in ResNet and
    EfficientNet; DenseNet's stem and each dense layer's norm2, the others follow concatenations; none in ConvNeXt
    and ViT): what the folding must remove, read from a forward pass of torchvision's model on the meta device."""
    import torch
    import torchvision

    with torch.device("meta"):
        network = torchvision.models.get_model(backbone).eval()
    if not any(isinstance(m, torch.nn.BatchNorm2d) for m in network.modules()):
        return 0
    conv_outputs, count = [], 0

    def after_conv(module, inputs, output):
        conv_outputs.append(output)

    def before_norm(module, inputs):
        nonlocal count
        count += any(inputs[0] is output for output in conv_outputs)

    for module in network.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(after_conv)
        elif isinstance(module, torch.nn.BatchNorm2d):
            module.register_forward_pre_hook(before_norm)
    with torch.no_grad():
        network(torch.empty((1, 3, 64, 64), device="meta"))
    return count
# every registered backbone but the ViT-L/16s (vit_l_16, retfound: ViT-B/16's layers, deeper and wider: 304 M weights)
CHECKED = [name for name in BACKBONES if name not in ("vit_l_16", "retfound")]


def _norms(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    """The BatchNormalization layers of ``model``'s graph and its nested models' graphs."""
    found = []
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            found += _norms(layer)
        elif isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
    return found


def _randomize(model: keras.Model, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for norm in _norms(model):
        n = norm.moving_mean.shape[0]
        norm.moving_mean.assign(rng.normal(0.0, 0.5, n).astype("float32"))
        norm.moving_variance.assign(rng.uniform(0.5, 2.0, n).astype("float32"))
        if norm.scale:
            norm.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
        if norm.center:
            norm.beta.assign(rng.normal(0.0, 0.5, n).astype("float32"))


def _inputs(shape, seed=1):
    rng = np.random.default_rng(seed)
    return {eye: rng.normal(size=(2, *shape)).astype("float32") for eye in ("left", "right")}


def _logits(model, inputs):
    return keras.ops.convert_to_numpy(dual_parts(model).inference_model(model).predict_on_batch(inputs))


def _assert_close(folded, unfolded, rtol=RTOL):
    bound = rtol * max(1.0, float(np.abs(unfolded).max()))
    assert np.abs(folded - unfolded).max() <= bound, (np.abs(folded - unfolded).max(), bound)


@pytest.mark.parametrize("backbone", CHECKED)
def test_folded_inference_model_matches_unfolded(backbone):
    model = build_dual_model(backbone, "v0", image_size=SIZE)
    _randomize(model)
    inputs = _inputs((SIZE, SIZE, 3))
    before = [keras.ops.convert_to_numpy(w).copy() for w in model.weights]
    unfolded = _logits(model, inputs)
    folded_model = fold_batchnorm(model)
    _assert_close(_logits(folded_model, inputs), unfolded)
    assert len(_norms(model)) - len(_norms(folded_model)) == _foldable(backbone)
    # the input model is left as it was
    assert all(np.array_equal(keras.ops.convert_to_numpy(w), b) for w, b in zip(model.weights, before))
    np.testing.assert_array_equal(_logits(model, inputs), unfolded)


def test_resnet50_folds_every_batchnorm():
    model = build_dual_model("resnet50", "v0", image_size=SIZE)
    folded = fold_batchnorm(model)
    assert len(_norms(model)) == 53
    assert len(_norms(folded)) == 0
    conv = dual_parts(folded).backbone.get_layer("layer1_0_conv1")
    assert conv.use_bias and conv.activation is keras.activations.relu
    assert dual_parts(model).backbone.get_layer("layer1_0_conv1").bias is None


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_b0"])
def test_channels_first(backbone):
    model = build_dual_model(backbone, "v0", image_size=SIZE, data_format="channels_first")
    _randomize(model)
    inputs = _inputs((3, SIZE, SIZE))
    folded = fold_batchnorm(model)
    assert len(_norms(model)) - len(_norms(folded)) == _foldable(backbone)
    _assert_close(_logits(folded, inputs), _logits(model, inputs))


def _small_model(data_format="channels_last"):
    """conv -> BN (folded); conv -> BN and Add (its output used twice: not folded); BN -> conv (not folded);
    depthwise (multiplier 2) -> BN + ReLU (folded); conv with a bias -> plain Keras BN (folded)."""
    layers, axis = keras.layers, (1 if data_format == "channels_first" else -1)
    shape = (3, 9, 9) if data_format == "channels_first" else (9, 9, 3)
    image = keras.Input(shape)
    x = layers.Conv2D(4, 3, padding="same", use_bias=False, data_format=data_format, name="c1")(image)
    x = TorchBatchNormalization(axis=axis, epsilon=1e-3, name="n1")(x)
    y = layers.Conv2D(4, 1, use_bias=False, data_format=data_format, name="c2")(x)
    x = layers.Add(name="add")([TorchBatchNormalization(axis=axis, name="n2")(y), y])
    x = TorchBatchNormalization(axis=axis, name="n3")(x)
    x = layers.Conv2D(4, 1, use_bias=False, data_format=data_format, name="c3")(x)
    x = layers.DepthwiseConv2D(3, depth_multiplier=2, use_bias=False, data_format=data_format, name="d4")(x)
    x = TorchBatchNormalization(axis=axis, activation="relu", name="n4")(x)
    x = layers.Conv2D(5, 1, data_format=data_format, name="c5")(x)
    x = layers.BatchNormalization(axis=axis, name="n5")(x)
    return keras.Model(image, x)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_which_batchnorms_fold(data_format):
    model = _small_model(data_format)
    _randomize(model)
    folded = fold_batchnorm(model)
    assert sorted(norm.name for norm in _norms(folded)) == ["n2", "n3"]
    x = np.random.default_rng(2).normal(size=(2, *model.inputs[0].shape[1:])).astype("float32")
    unfolded = keras.ops.convert_to_numpy(model.predict_on_batch(x))
    _assert_close(keras.ops.convert_to_numpy(folded.predict_on_batch(x)), unfolded)


def test_mixed_precision_keeps_the_policy_and_float32_weights():
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        model = _small_model()
    finally:
        keras.config.set_dtype_policy(previous)
    _randomize(model)
    folded = fold_batchnorm(model)
    conv = folded.get_layer("c1")
    assert conv.dtype_policy.name == "mixed_bfloat16" and conv.kernel.dtype == "float32"
    x = np.random.default_rng(3).normal(size=(2, 9, 9, 3)).astype("float32")
    unfolded = keras.ops.convert_to_numpy(keras.ops.cast(model.predict_on_batch(x), "float32"))
    _assert_close(keras.ops.convert_to_numpy(keras.ops.cast(folded.predict_on_batch(x), "float32")), unfolded,
                  rtol=5e-2)  # bfloat16 keeps 8 bits of mantissa


JAX_CHECK = textwrap.dedent(f"""
    import numpy as np, keras
    from tests.test_folding import _assert_close, _inputs, _logits, _norms, _randomize
    from keras_odir.folding import fold_batchnorm
    from keras_odir.model import build_dual_model
    assert keras.backend.backend() == "jax"
    model = build_dual_model("resnet50", "v0", image_size={SIZE})
    _randomize(model)
    folded = fold_batchnorm(model)
    assert len(_norms(folded)) == 0
    _assert_close(_logits(folded, _inputs(({SIZE}, {SIZE}, 3))), _logits(model, _inputs(({SIZE}, {SIZE}, 3))))
""")


def test_resnet50_on_jax():
    pytest.importorskip("jax")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", JAX_CHECK], env=env, cwd=root, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
