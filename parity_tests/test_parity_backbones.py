"""The registered backbones of the families besides ResNet and DenseNet (EfficientNet-B0/B3, ConvNeXt-Tiny,
MobileNetV2) in Keras against torchvision's own models, same weights, 64 px (the Vision Transformers, whose
torchvision model takes 224 px only: test_parity_vit.py).

Per backbone, from one torchvision-format checkpoint file written here (torchvision's constructor, its
classifier included, with trained-looking weights): both frameworks' ``build_backbone(weights=PATH)``
load it; pooled features in inference and in training mode (BatchNorm batch statistics, stochastic
depth and dropout off) match relative to their largest value within 1e-4 or twice torch's own
float32-vs-float64 error; the Keras -> torch state round trip is exact; the dual model (backbone and
head read from a torch_odir state_dict's keys alone) gives torch_odir's logits and the same weights
after one SGD step on the head. Stochastic depth and dropout sit where torchvision has them, at its
rates, and drop at those rates in training. LayerNorm, exact GELU, BatchNorm + SiLU and
squeeze-excitation are also compared one layer at a time.
"""

from __future__ import annotations

import contextlib
import copy
from typing import NamedTuple

import keras
import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.convnext import LayerNorm2d
from torchvision.ops import SqueezeExcitation as TorchSqueezeExcitation
from torchvision.ops import StochasticDepth as TorchStochasticDepth

import keras_odir.families.convnext
from keras_odir.layers import SqueezeExcitation, StochasticDepth, TorchBatchNormalization
from keras_odir.model import build_backbone, dual_model_from_state
from keras_odir.weights import keras_to_numpy_state, torch_to_keras_state
from odir_core.model.model_spec import BACKBONES as REGISTERED
from odir_core.model.model_spec import backbone_spec, infer_architecture, infer_backbone
from odir_core.training.class_weights import pos_weight_from_labels
from parity_helpers import assert_initialised_alike, float64_error, images, nchw
from test_parity_resnet_densenet import FAMILIES as RESNET_DENSENET
from test_training_parity import SCHEDULES, STEP_TOL, compare_states, keras_fit, labels, torch_fit
from torch_odir.model import DualNet
from torch_odir.model import build_backbone as torch_backbone

pytestmark = pytest.mark.backbone_zoo  # not in the tensorflow re-run (test_parity_backends.py)

# the Vision Transformers: test_parity_vit.py
BACKBONES = [name for name, spec in REGISTERED.items() if spec.family not in (*RESNET_DENSENET, "vit")]
SIZE, BATCH = 64, 2
SAMPLES = 1000  # samples for a drop rate: within 5 binomial standard deviations of the rate
TORCH_BACKEND = keras.backend.backend() == "torch"


def _trained_looking(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights in which every parameter matters: non-zero biases, norm scales and layer scales near 1,
    convs and Linears of ConvNeXt variance-preserving (torchvision's std 0.02 and layer scale 1e-6 make its
    blocks nearly the identity), BatchNorm running statistics from one batch (so activations stay O(1))."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for key, param in model.named_parameters():
            if key.endswith("layer_scale") or (param.ndim == 1 and key.endswith("weight")):
                param.uniform_(0.5, 1.5)
            elif param.ndim == 1:
                param.normal_(0.0, 0.1)
            elif isinstance(model, torchvision.models.ConvNeXt):
                param.normal_(0.0, param[0].numel() ** -0.5)
        batchnorms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for bn in batchnorms:
            bn.momentum = None  # cumulative average: one batch sets the running stats to its own
            bn.reset_running_stats()
        model.train()(torch.randn(8, 3, SIZE, SIZE))
        for bn in batchnorms:
            bn.momentum = 0.1
            bn.num_batches_tracked.zero_()
    return model.eval()


def _stochastic_layers(keras_model):
    return [layer for layer in keras_model.layers if isinstance(layer, (StochasticDepth, keras.layers.Dropout))]


@contextlib.contextmanager
def stochastic_off(keras_model, torch_model):
    """Stochastic depth and dropout off in both models (training mode made deterministic), then restored."""
    layers = _stochastic_layers(keras_model)
    modules = [m for m in torch_model.modules() if isinstance(m, (TorchStochasticDepth, torch.nn.Dropout))]
    rates, probabilities = [layer.rate for layer in layers], [m.p for m in modules]
    for layer in layers:
        layer.rate = 0.0
    for module in modules:
        module.p = 0.0
    try:
        yield
    finally:
        for layer, rate in zip(layers, rates):
            layer.rate = rate
        for module, p in zip(modules, probabilities):
            module.p = p


class Pair(NamedTuple):
    full: torch.nn.Module  # torchvision's model with its classifier, as written to ``path``
    torch: torch.nn.Module  # torch_odir's backbone loaded from ``path``
    keras: keras.Model  # keras_odir's backbone loaded from ``path``
    state: dict  # the backbone's torch state_dict
    path: object


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """name -> its Pair, made on first use."""
    made = {}

    def get(name: str) -> Pair:
        if name not in made:
            full = _trained_looking(torchvision.models.get_model(name), seed=BACKBONES.index(name))
            file = next(iter(backbone_spec(name).imagenet_checkpoints))
            path = tmp_path_factory.mktemp(name) / "hub" / "checkpoints" / file
            path.parent.mkdir(parents=True)
            torch.save(full.state_dict(), path)
            reference = torch_backbone(name, weights=path).eval()
            made[name] = Pair(full, reference, build_backbone(name, weights=path), reference.state_dict(), path)
        return made[name]

    return get


@pytest.mark.parametrize("name", BACKBONES)
def test_checkpoint_file_loads_in_both_frameworks(pairs, monkeypatch, name):
    """A torchvision checkpoint file (classifier included) at a path or in $TORCH_HOME/hub/checkpoints: torch_odir
    gets torchvision's model without its last Linear, keras_odir exactly the same weights (keras -> torch state;
    their features: test_features_match_torchvision)."""
    pair = pairs(name)
    monkeypatch.setenv("TORCH_HOME", str(pair.path.parents[2]))
    from_hub = torch_backbone(name, weights="imagenet").state_dict()
    assert all(torch.equal(from_hub[k], v) for k, v in pair.state.items())
    full = copy.deepcopy(pair.full)
    parent, _, last = backbone_spec(name).classifier.rpartition(".")
    setattr(full.get_submodule(parent), last, torch.nn.Identity())
    x = nchw(images(BATCH, SIZE, seed=4))
    with torch.no_grad():
        torch.testing.assert_close(pair.torch(x), full.eval()(x), rtol=0, atol=1e-6)
    back = keras_to_numpy_state(pair.keras)
    assert set(back) == set(pair.state)
    for key, value in pair.state.items():
        np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)


@pytest.mark.parametrize("name", BACKBONES)
def test_layer_settings_as_torchvision(pairs, name):
    """Every Keras layer with weights is named after a torchvision module with its settings: norm epsilon,
    BatchNorm momentum, conv kernel size and stride (epsilons too small to show in the features)."""
    pair = pairs(name)
    modules = dict(pair.torch.named_modules())
    for layer in pair.keras.layers:
        if not layer.weights:
            continue
        module = modules[layer.name.replace("_", ".")]
        if isinstance(layer, keras.layers.BatchNormalization):
            assert (layer.epsilon, 1 - layer.momentum) == pytest.approx((module.eps, module.momentum)), layer.name
        elif isinstance(layer, keras.layers.LayerNormalization):
            assert layer.epsilon == module.eps, layer.name
        elif isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
            assert (tuple(layer.kernel_size), tuple(layer.strides)) == (module.kernel_size, module.stride), layer.name


@pytest.mark.parametrize("training", [False, True], ids=["inference", "train"])
@pytest.mark.parametrize("name", BACKBONES)
def test_features_match_torchvision(pairs, record, name, training):
    pair = pairs(name)
    reference = copy.deepcopy(pair.torch).train(training)
    x = images(BATCH, SIZE, seed=7)
    with stochastic_off(pair.keras, reference), torch.no_grad():
        want = reference(nchw(x)).numpy()
        got = keras.ops.convert_to_numpy(pair.keras(x, training=training))
        got_state = keras_to_numpy_state(pair.keras)
        torch_to_keras_state(pair.keras, pair.state)  # the loaded BatchNorm statistics back for the other tests
        scale = float(np.abs(want).max())
        error = float64_error(reference, (nchw(x),), want, training)
        record(f"{name} features {BATCH}x{SIZE}px {'train' if training else 'inference'} (relative)", got, want,
               relative=True, floor=lambda: error() / scale)
    assert got.shape == (BATCH, backbone_spec(name).features)
    if training and any(isinstance(m, torch.nn.BatchNorm2d) for m in reference.modules()):
        want_state = reference.state_dict()
        keys = [k for k in want_state if k.endswith(("running_mean", "running_var"))]
        worst = max(keys, key=lambda k: np.abs(got_state[k] - want_state[k].numpy()).max()
                    / np.abs(want_state[k].numpy()).max())
        record(f"{name} BN running stats after 1 train forward (worst: {worst}, relative)", got_state[worst],
               want_state[worst].numpy(), tol=1e-3, relative=True)


@pytest.mark.skipif(not TORCH_BACKEND, reason="channels_first is checked on the torch backend")
@pytest.mark.parametrize("name", BACKBONES)
def test_channels_first_features(pairs, record, name):
    pair = pairs(name)
    model = torch_to_keras_state(build_backbone(name, data_format="channels_first"), pair.state)
    x = images(BATCH, SIZE, seed=8, channels_first=True)
    with torch.no_grad():
        want = pair.torch(torch.from_numpy(x)).numpy()
    got = keras.ops.convert_to_numpy(model(x, training=False))
    record(f"{name} features channels_first {BATCH}x{SIZE}px inference (relative)", got, want, relative=True)


@pytest.mark.parametrize("name", BACKBONES)
def test_dual_model_logits_round_trip_and_head_step(pairs, record, name):
    """torch_odir's DualNet (frozen backbone, head v0) -> its state_dict -> a Keras dual model built from the keys
    alone: logits, an exact state round trip, and every weight after one SGD step on the head."""
    pair = pairs(name)
    torch.manual_seed(3)
    torch_model = DualNet(name, "v0", freeze_backbone=True)
    torch_model.backbone.load_state_dict(pair.state)
    state = torch_model.state_dict()
    assert infer_architecture(state)[0].name == name
    keras_model = dual_model_from_state(state, freeze_backbone=True, image_size=SIZE)
    left, right = images(BATCH, SIZE, seed=1), images(BATCH, SIZE, seed=2)
    back = keras_to_numpy_state(keras_model)
    assert set(back) == set(state)
    for key, value in state.items():
        np.testing.assert_array_equal(back[key], value.numpy(), err_msg=key)
    inputs = (nchw(left), nchw(right))
    with torch.no_grad():
        want = torch_model.eval()(*inputs).numpy()
    got = keras.ops.convert_to_numpy(keras_model({"left": left, "right": right}, training=False))
    record(f"{name} dual v0 logits {BATCH}x{SIZE}px inference", got, want,
           floor=float64_error(torch_model, inputs, want, training=False))
    # a frozen backbone runs in inference mode: no batch statistics, stochastic depth or dropout in training
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(keras_model({"left": left, "right": right},
                                                                         training=True)), got)
    y = labels(BATCH, seed=5)
    schedule, pos_weight = SCHEDULES["none"](0.05), pos_weight_from_labels(y)
    torch_fit(torch_model, list(inputs), y, schedule, pos_weight, 1)
    keras_fit(keras_model, {"left": left, "right": right}, y, schedule, pos_weight, 1)
    compare_states(record, f"{name} dual v0 frozen one SGD step", keras_model, torch_model, tol=STEP_TOL)


@pytest.mark.parametrize("name", BACKBONES)
def test_stochastic_depth_and_dropout_as_torchvision(pairs, name):
    """Stochastic depth on every residual block (where torchvision has it) and the dropout before the replaced
    Linear, at torchvision's rates; the block with the highest rate drops whole samples at that rate in training
    (the others kept scaled by 1 / (1 - rate)); inference is deterministic."""
    pair = pairs(name)
    torch_rates = {key: m.p for key, m in pair.full.named_modules() if isinstance(m, TorchStochasticDepth)}
    if isinstance(pair.full, torchvision.models.EfficientNet):  # torchvision's non-residual blocks never use theirs
        residual = {key for key, m in pair.full.named_modules() if getattr(m, "use_res_connect", False)}
        torch_rates = {k: p for k, p in torch_rates.items() if k.rpartition(".")[0] in residual}
    layers = _stochastic_layers(pair.keras)
    depth = {layer.name.removesuffix("_stochastic_depth").replace("_", ".") + ".stochastic_depth": layer.rate
             for layer in layers if isinstance(layer, StochasticDepth)}
    assert depth == torch_rates
    dropout = [layer.rate for layer in layers if not isinstance(layer, StochasticDepth)]
    assert dropout == [m.p for m in pair.full.modules() if isinstance(m, torch.nn.Dropout)]

    try:  # training calls update the BatchNorm statistics: the loaded ones back afterwards
        if depth:  # MobileNetV2 has no stochastic depth
            block = max((layer for layer in layers if isinstance(layer, StochasticDepth)),
                        key=lambda layer: layer.rate)
            block_input = pair.keras.get_layer(block.name.replace("stochastic_depth", "add")).input[1]
            branch_model = keras.Model(block_input, [block.input, block.output])
            x = np.random.default_rng(0).standard_normal((SAMPLES, 1, 1, block_input.shape[-1])).astype(np.float32)
            _drops_at_its_rate(block, branch_model, x)
        # 8 images: two training calls drop the same blocks of every image with probability < 1e-6
        x = images(8, 32, seed=9)
        first, second = (keras.ops.convert_to_numpy(pair.keras(x, training=False)) for _ in range(2))
        np.testing.assert_array_equal(first, second)
        assert not np.array_equal(*(keras.ops.convert_to_numpy(pair.keras(x, training=True)) for _ in range(2)))
    finally:
        torch_to_keras_state(pair.keras, pair.state)
    for layer in layers:
        if isinstance(layer, keras.layers.Dropout):
            out = keras.ops.convert_to_numpy(layer(np.ones((SAMPLES, 16), np.float32), training=True))
            assert abs((out == 0).mean() - layer.rate) <= 5 * np.sqrt(layer.rate * (1 - layer.rate) / out.size)
            np.testing.assert_allclose(out[out != 0], 1 / (1 - layer.rate), rtol=1e-6)


def _drops_at_its_rate(block, branch_model, x):
    """``block`` (a StochasticDepth layer) zeroes whole samples of its input at its rate and scales the others."""
    branch, out = (keras.ops.convert_to_numpy(t) for t in branch_model(x, training=True))
    dropped = np.all(out == 0, axis=(1, 2, 3))
    bound = 5 * np.sqrt(block.rate * (1 - block.rate) / SAMPLES)
    assert abs(dropped.mean() - block.rate) <= bound, (block.name, dropped.mean(), block.rate)
    np.testing.assert_allclose(out[~dropped], branch[~dropped] / (1 - block.rate), rtol=1e-6, atol=0)
    branch, out = (keras.ops.convert_to_numpy(t) for t in branch_model(x, training=False))
    np.testing.assert_array_equal(out, branch)


@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_stochastic_depth_layer_as_torchvision(rate):
    """keras_odir's StochasticDepth against torchvision.ops.stochastic_depth("row") on the same input: the same
    kept values, whole samples dropped, both at ``rate`` within 5 binomial standard deviations."""
    x = np.random.default_rng(1).uniform(0.5, 1.5, (4 * SAMPLES, 3, 2, 2)).astype(np.float32)
    torch.manual_seed(0)
    want = torchvision.ops.stochastic_depth(torch.from_numpy(x), rate, "row", training=True).numpy()
    layer = StochasticDepth(rate, seed=0)
    got = keras.ops.convert_to_numpy(layer(x, training=True))
    bound = 5 * np.sqrt(rate * (1 - rate) / len(x))
    for out in (got, want):
        dropped = np.all(out == 0, axis=(1, 2, 3))
        assert np.all(np.any(out == 0, axis=(1, 2, 3)) == dropped)  # whole samples
        assert abs(dropped.mean() - rate) <= bound
        np.testing.assert_allclose(out[~dropped], x[~dropped] / (1 - rate), rtol=1e-6, atol=0)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, StochasticDepth) and (restored.rate, restored.seed) == (rate, 0)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_layer_norm_2d_as_torchvision(record, data_format):
    """ConvNeXt's LayerNorm over channels (epsilon 1e-6) on activations with a large common offset."""
    torch.manual_seed(0)
    reference = LayerNorm2d(48, eps=1e-6)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5)
        reference.bias.normal_(0, 0.1)
    x = np.random.default_rng(2).normal(3.0, 1.0, (2, 48, 6, 6)).astype(np.float32)
    first = data_format == "channels_first"
    inputs = keras.Input(x.shape[1:] if first else (6, 6, 48))
    model = keras.Model(inputs, keras_odir.families.convnext._layer_norm_2d(inputs, "norm", data_format))
    torch_to_keras_state(model, {f"norm.{k}": v for k, v in reference.state_dict().items()})
    with torch.no_grad():
        want = reference(torch.from_numpy(x)).numpy()
    got = keras.ops.convert_to_numpy(model(x if first else x.transpose(0, 2, 3, 1)))
    record(f"ConvNeXt LayerNorm2d {data_format}", got if first else got.transpose(0, 3, 1, 2), want)


def test_gelu_linear_as_torch(record):
    """ConvNeXt's Linear + exact (erf) GELU."""
    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU())
    inputs = keras.Input((16,))
    model = keras.Model(inputs, keras.layers.Dense(64, activation="gelu", name="fc")(inputs))
    torch_to_keras_state(model, {k.replace("0.", "fc.", 1): v for k, v in reference.state_dict().items()})
    x = np.random.default_rng(3).normal(0.0, 2.0, (32, 16)).astype(np.float32)
    with torch.no_grad():
        want = reference(torch.from_numpy(x)).numpy()
    record("ConvNeXt Linear + GELU", keras.ops.convert_to_numpy(model(x)), want)


@pytest.mark.parametrize("training", [False, True], ids=["inference", "train"])
def test_batchnorm_silu_as_torch(record, training):
    """EfficientNet's BatchNorm + SiLU as one TorchBatchNormalization(activation="silu"), moving statistics too."""
    torch.manual_seed(0)
    reference = torch.nn.Sequential(torch.nn.BatchNorm2d(8), torch.nn.SiLU())
    with torch.no_grad():
        reference[0].weight.uniform_(0.5, 1.5)
        reference[0].bias.normal_(0, 0.5)
        reference[0].running_mean.normal_(0, 0.5)
        reference[0].running_var.uniform_(0.5, 1.5)
    inputs = keras.Input((5, 5, 8))
    layer = TorchBatchNormalization(momentum=0.9, epsilon=1e-5, activation="silu", name="bn")
    model = keras.Model(inputs, layer(inputs))
    torch_to_keras_state(model, {k.replace("0.", "bn.", 1): v for k, v in reference.state_dict().items()})
    x = np.random.default_rng(4).normal(1.0, 2.0, (4, 5, 5, 8)).astype(np.float32)
    with torch.no_grad():
        want = reference.train(training)(nchw(x)).numpy().transpose(0, 2, 3, 1)
    record(f"EfficientNet BatchNorm + SiLU {'train' if training else 'inference'}",
           keras.ops.convert_to_numpy(model(x, training=training)), want)
    got_state = keras_to_numpy_state(model)
    for key in ("bn.running_mean", "bn.running_var"):
        np.testing.assert_allclose(got_state[key], reference.state_dict()[key.replace("bn.", "0.")].numpy(),
                                   rtol=1e-5, atol=1e-6)


def test_squeeze_excitation_as_torchvision(record):
    """EfficientNet's squeeze-excitation (SiLU inside) as one SqueezeExcitation layer, torch keys fc1/fc2."""
    torch.manual_seed(0)
    reference = TorchSqueezeExcitation(24, 6, activation=torch.nn.SiLU)
    with torch.no_grad():
        for param in reference.parameters():
            param.normal_(0, 0.5)
    inputs = keras.Input((7, 7, 24))
    model = keras.Model(inputs, SqueezeExcitation(6, name="se")(inputs))
    torch_to_keras_state(model, {f"se.{k}": v for k, v in reference.state_dict().items()})
    x = np.random.default_rng(5).normal(0.5, 1.0, (2, 7, 7, 24)).astype(np.float32)
    with torch.no_grad():
        want = reference(nchw(x)).numpy().transpose(0, 2, 3, 1)
    record("EfficientNet squeeze-excitation", keras.ops.convert_to_numpy(model(x)), want)


@pytest.mark.skipif(not TORCH_BACKEND, reason="initialisation is checked on the torch backend")
@pytest.mark.parametrize("name", BACKBONES)
def test_initialisation_as_torchvision(name):
    """Fresh weights drawn as torchvision's constructor draws them: constants equal; random tensors of n >= 1000
    values with the same mean and standard deviation within 6 standard errors of their difference
    (std ratio within 6 / sqrt(n): 19% at n = 1000, where a wrong gain or fan is 40% or more off)."""
    torch.manual_seed(0)
    want = torch_backbone(name).state_dict()
    keras.utils.set_random_seed(0)
    got = keras_to_numpy_state(build_backbone(name))
    assert_initialised_alike(want, got)


@pytest.mark.skipif(not TORCH_BACKEND, reason="saving is checked on the torch backend")
@pytest.mark.parametrize("name", BACKBONES)
def test_saved_backbone_reloads(pairs, tmp_path, name):
    """A .keras file of the backbone (its custom layers registered by ``import keras_odir``) reloads to the
    same features."""
    pair = pairs(name)
    pair.keras.save(tmp_path / "backbone.keras")
    restored = keras.saving.load_model(tmp_path / "backbone.keras")
    x = images(1, SIZE, seed=10)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(restored(x, training=False)),
                                  keras.ops.convert_to_numpy(pair.keras(x, training=False)))


def test_every_registered_backbone_is_told_apart_by_its_keys():
    """The keys of each registered backbone as torch_odir builds it (torchvision's or timm's modules, classifier
    aside), and a dual state_dict of them, name that backbone and no other."""
    for name, spec in REGISTERED.items():
        with torch.device("meta"):
            keys = list(torch_backbone(spec).state_dict().keys())
        assert infer_backbone(keys).name == name
        spec_found, head = infer_architecture([f"backbone.{k}" for k in keys] + ["head.0.weight", "head.0.bias"])
        assert (spec_found, head.name) == (spec, "v0")
