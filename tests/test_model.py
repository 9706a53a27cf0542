"""The Keras and torch dual ResNet50: structure against torchvision, heads, freezing, .keras round trip."""

from __future__ import annotations

import dataclasses

import keras_odir  # noqa: F401  (torch backend unless KERAS_BACKEND says otherwise)
import keras
import numpy as np
import pytest
import torch
import torchvision

from keras_odir.families import BUILDERS
from keras_odir.model import build_backbone, build_dual_model
from keras_odir.parts import dual_parts
from keras_odir.weights import keras_to_numpy_state, torch_to_keras_state, weight_table
from odir_core.model.families import FAMILIES
from odir_core.model.model_spec import BACKBONES, HEADS, Dropout, HeadSpec, Linear, infer_head
from torch_odir.model import DualNet, DualResNet50


def _torchvision_backbone_keys() -> list[str]:
    state = torchvision.models.resnet50(weights=None).state_dict()
    return [k for k in state if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]


def test_every_family_has_a_keras_builder_and_every_backbone_a_family():
    assert BUILDERS.keys() == FAMILIES.keys()
    assert {spec.family for spec in BACKBONES.values()} == FAMILIES.keys()


@pytest.fixture(scope="module")
def backbone():
    return build_backbone()


def test_backbone_layers_map_one_to_one_to_torchvision_keys(backbone):
    assert sorted(weight_table(backbone)) == sorted(_torchvision_backbone_keys())
    assert backbone.get_layer("layer3_4_conv2").kernel.shape == (3, 3, 256, 256)
    reference = torchvision.models.resnet50(weights=None)
    n_reference = sum(p.numel() for n, p in reference.named_parameters() if not n.startswith("fc."))
    assert backbone.count_params() - sum(int(np.prod(v.shape)) for v in backbone.non_trainable_weights) \
        == n_reference


@pytest.mark.parametrize("size", [33, 64])
def test_backbone_output_and_spatial_sizes_match_torchvision(backbone, size):
    reference = torchvision.models.resnet50(weights=None).eval()
    shapes = {}
    reference.layer4.register_forward_hook(lambda m, i, o: shapes.update(layer4=tuple(o.shape)))
    with torch.no_grad():
        reference(torch.zeros(1, 3, size, size))
    layer4 = keras.Model(backbone.input, backbone.get_layer("layer4_2_relu3").output)
    out = layer4(np.zeros((1, size, size, 3), "float32"))
    n, c, h, w = shapes["layer4"]
    assert tuple(out.shape) == (n, h, w, c)
    assert tuple(backbone(np.zeros((1, size, size, 3), "float32")).shape) == (1, 2048)


@pytest.mark.parametrize("head", list(HEADS))
def test_dual_model_keys_match_torch_model(head):
    model = build_dual_model(head=head, image_size=32)
    torch_keys = [k for k in DualResNet50(head).state_dict() if not k.endswith("num_batches_tracked")]
    assert sorted(weight_table(model)) == sorted(torch_keys)
    assert infer_head(DualResNet50(head).state_dict()) is HEADS[head]
    logits = model({"left": np.zeros((2, 32, 32, 3), "float32"), "right": np.ones((2, 32, 32, 3), "float32")})
    assert tuple(logits.shape) == (2, 8)
    assert sorted(model.input) == ["left", "right"]


def test_head_initialisation_follows_torch_linear():
    torch.manual_seed(0)
    keras.utils.set_random_seed(0)
    model = build_dual_model(head="v2", image_size=32)
    reference = DualResNet50("v2").head
    for index in (0, 3, 6):
        kernel = keras.ops.convert_to_numpy(dual_parts(model).head.get_layer(f"head_{index}").kernel)
        weight = reference[index].weight.detach().numpy()
        bound = 1 / np.sqrt(weight.shape[1])
        assert np.abs(kernel).max() <= bound
        assert kernel.std() == pytest.approx(weight.std(), rel=0.1)


def test_unknown_head_is_rejected():
    with pytest.raises(ValueError, match="v3"):
        build_dual_model(head="v3")
    with pytest.raises(ValueError, match="v3"):
        DualResNet50("v3")


def test_specs_outside_the_registries_are_built_as_given():
    """A spec object goes down to the builders as it is: one that no registry holds builds in both frameworks."""
    backbone = dataclasses.replace(BACKBONES["resnet18"], name="resnet18_copy")
    head = HeadSpec("narrow", (Dropout(0.1), Linear(16), Linear()))
    model = build_dual_model(backbone, head, image_size=32)
    assert model.name == "dual_resnet18_copy_narrow"
    torch_model = DualNet(backbone, head)
    assert torch_model.spec is backbone and torch_model.head_spec is head
    torch_keys = [k for k in torch_model.state_dict() if not k.endswith("num_batches_tracked")]
    assert sorted(weight_table(model)) == sorted(torch_keys)
    assert {k for k in torch_keys if k.startswith("head.")} == head.state_keys == {
        "head.1.weight", "head.1.bias", "head.2.weight", "head.2.bias"}
    logits = model({"left": np.zeros((1, 32, 32, 3), "float32"), "right": np.zeros((1, 32, 32, 3), "float32")})
    assert tuple(logits.shape) == (1, 8)


def test_frozen_keras_backbone_runs_in_inference_mode():
    model = build_dual_model(head="v0", freeze_backbone=True, image_size=32)
    assert [v.path for v in model.trainable_weights] == ["head_0/kernel", "head_0/bias"]
    batch = {"left": np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype("float32"),
             "right": np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype("float32")}
    bn = dual_parts(model).backbone.get_layer("layer1_0_bn1")
    before = keras.ops.convert_to_numpy(bn.moving_mean).copy()
    trained = keras.ops.convert_to_numpy(model(batch, training=True))
    inferred = keras.ops.convert_to_numpy(model(batch, training=False))
    np.testing.assert_array_equal(trained, inferred)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(bn.moving_mean), before)


def test_unfrozen_keras_backbone_uses_batch_statistics_in_training():
    model = build_dual_model(head="v0", image_size=32)
    batch = {"left": np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype("float32"),
             "right": np.random.default_rng(1).standard_normal((2, 32, 32, 3)).astype("float32")}
    trained = keras.ops.convert_to_numpy(model(batch, training=True))
    inferred = keras.ops.convert_to_numpy(model(batch, training=False))
    assert np.abs(trained - inferred).max() > 1e-3


def test_frozen_torch_backbone_stays_in_eval_mode():
    model = DualResNet50("v1", freeze_backbone=True)
    model.train()
    assert model.training and model.head.training
    assert not model.backbone.training
    assert not any(m.training for m in model.backbone.modules())
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert all(p.requires_grad for p in model.head.parameters())
    before = model.backbone.bn1.running_mean.clone()
    model(torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32))
    assert torch.equal(model.backbone.bn1.running_mean, before)


def test_keras_save_and_load_round_trip(tmp_path):
    torch.manual_seed(3)
    model = torch_to_keras_state(build_dual_model(head="v2", freeze_backbone=True), DualResNet50("v2").state_dict())
    batch = {"left": np.random.default_rng(0).standard_normal((1, 48, 48, 3)).astype("float32"),
             "right": np.random.default_rng(1).standard_normal((1, 48, 48, 3)).astype("float32")}
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(loaded(batch)), keras.ops.convert_to_numpy(model(batch)))
    assert not dual_parts(loaded).backbone.trainable
    assert len(loaded.trainable_weights) == 6
    for a, b in zip(model.weights, loaded.weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


def test_registered_module_paths_are_told_apart_by_their_keras_names():
    paths = {key.rpartition(".")[0] for spec in BACKBONES.values() for key in spec.state_keys}
    names = {}
    for path in paths:
        names.setdefault(path.replace(".", "_"), set()).add(path)
    assert {name: found for name, found in names.items() if len(found) > 1} == {}


def test_torch_module_path_with_underscores_maps_through_the_registry(monkeypatch):
    # torchvision's ViT names its modules conv_proj, encoder.layers.encoder_layer_0.ln_1, ...
    keys = ["conv_proj.weight", "conv_proj.bias", "encoder.layers.encoder_layer_0.ln_1.weight",
            "encoder.layers.encoder_layer_0.ln_1.bias"]
    spec = dataclasses.replace(BACKBONES["resnet18"], name="vit_like", state_keys=frozenset(keys))
    monkeypatch.setitem(BACKBONES, "vit_like", spec)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 2, name="conv_proj")(inputs)
    x = keras.layers.LayerNormalization(name="encoder_layers_encoder_layer_0_ln_1")(x)
    model = keras.Model(inputs, x)
    assert list(weight_table(model)) == keys
    rng = np.random.default_rng(0)
    state = {"conv_proj.weight": rng.normal(size=(4, 3, 2, 2)), "conv_proj.bias": rng.normal(size=4),
             "encoder.layers.encoder_layer_0.ln_1.weight": rng.normal(size=4),
             "encoder.layers.encoder_layer_0.ln_1.bias": rng.normal(size=4)}
    back = keras_to_numpy_state(torch_to_keras_state(model, state))
    assert back.keys() == state.keys()
    for key, value in state.items():
        np.testing.assert_allclose(back[key], value, rtol=1e-6, err_msg=key)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model.get_layer("conv_proj").kernel),
                               state["conv_proj.weight"].transpose(2, 3, 1, 0), rtol=1e-6)
