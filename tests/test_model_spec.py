"""The framework-free model specification and checkpoint unwrapping, against torchvision's own models."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from odir_core.data.augment import MODES
from odir_core.model.checkpoints import (
    CheckpointError,
    CheckpointNotFoundError,
    download_checkpoint,
    dual_state_dict,
    unwrap_state_dict,
)
from odir_core.model.model_spec import (
    BACKBONES,
    HEADS,
    ArchitectureError,
    CrossEyeCorrelation,
    Dropout,
    MAP_LAYERS,
    Linear,
    MLDecoder,
    ReLU,
    backbone_spec,
    check_architecture,
    head_spec,
    infer_architecture,
    infer_backbone,
)
from odir_core.training import config as config_module
from odir_core.training.schedules import CYCLIC_MODES, SCHEDULERS
from torch_odir.mldecoder import MLDecoder as MLDecoderModule
from torch_odir.model import CorrelationFusion, DualNet, build_head


@pytest.mark.parametrize("name", [name for name, spec in BACKBONES.items() if spec.torchvision])  # timm's: test_retfound
def test_registry_matches_torchvision(name):
    spec = BACKBONES[name]
    model = getattr(torchvision.models, spec.torchvision)(weights=None).eval()
    keys = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    classifier = {k for k in keys if k.startswith(spec.classifier + ".")}
    assert classifier  # the named classifier exists in torchvision's model
    assert spec.state_keys == keys - classifier
    assert model.get_submodule(spec.classifier).in_features == spec.features
    assert isinstance(model.get_submodule(spec.gradcam_stage), nn.Module)
    # torchvision's file names: resnet50-11ad3fa6.pth, efficientnet_b0_rwightman-7f5810bc.pth
    assert all(file.startswith((spec.torchvision + "-", spec.torchvision + "_")) and url.endswith("/" + file)
               for file, url in spec.imagenet_checkpoints.items())
    weights = torchvision.models.get_model_weights(spec.torchvision)
    assert {w.url.rsplit("/", 1)[-1] for w in weights} == set(spec.imagenet_checkpoints)
    np.testing.assert_allclose(spec.mean, weights.DEFAULT.transforms().mean)
    np.testing.assert_allclose(spec.std, weights.DEFAULT.transforms().std)


@pytest.mark.parametrize("head", list(HEADS))
def test_torch_head_follows_the_spec(head):
    spec = HEADS[head]
    modules = list(build_head(spec, 4096))
    assert len(modules) == len(spec.layers)
    for module, layer in zip(modules, spec.layers):
        if isinstance(layer, Linear):
            assert isinstance(module, nn.Linear) and module.out_features == layer.units
        elif isinstance(layer, Dropout):
            assert isinstance(module, nn.Dropout) and module.p == layer.rate
        elif isinstance(layer, CrossEyeCorrelation):
            assert isinstance(module, CorrelationFusion) and not list(module.parameters())
        elif isinstance(layer, MLDecoder):
            assert isinstance(module, MLDecoderModule) and module.out_features == layer.units
            assert module.attn.num_heads == layer.heads and module.ff1.out_features == layer.ff
        else:
            assert isinstance(layer, ReLU) and isinstance(module, nn.ReLU)
    assert modules[-1].out_features == 8
    assert {f"head.{k}" for k in build_head(spec, 4096).state_dict()} == spec.state_keys
    assert spec.uses_maps == isinstance(spec.layers[0], MAP_LAYERS)


@pytest.mark.parametrize("head", list(HEADS))
def test_architecture_is_read_from_keys(head):
    spec, found = infer_architecture(DualNet("resnet50", head).state_dict())
    assert (spec, found) == (BACKBONES["resnet50"], HEADS[head])


def test_resolvers_look_names_up_and_pass_specs_through():
    for name, spec in BACKBONES.items():
        assert backbone_spec(name) is spec and backbone_spec(spec) is spec
    for name, spec in HEADS.items():
        assert head_spec(name) is spec and head_spec(spec) is spec
    with pytest.raises(ValueError, match="Unknown backbone 'resnet9'; choose one of resnet18, "):
        backbone_spec("resnet9")
    with pytest.raises(ValueError, match="Unknown head 'v3'; choose one of v0, v1, v2, scm, mldecoder"):
        head_spec("v3")
    assert [name for name, spec in HEADS.items() if spec.uses_maps] == ["scm", "mldecoder"]
    config = config_module.TrainConfig(backbone="resnet18", head="scm")
    assert config.backbone_spec is BACKBONES["resnet18"] and config.head_spec is HEADS["scm"]


def test_keys_of_another_network_are_refused():
    # torchvision's ResNet with one bottleneck more in layer3 than the deepest registered one: not registered
    deepest = max((spec for spec in BACKBONES.values() if spec.family == "resnet" and spec.bottleneck),
                  key=lambda spec: sum(spec.blocks))
    blocks = [*deepest.blocks[:2], deepest.blocks[2] + 1, *deepest.blocks[3:]]
    with torch.device("meta"):
        deeper = torchvision.models.resnet.ResNet(torchvision.models.resnet.Bottleneck, blocks).state_dict()
    # a bottleneck holds 15 keys: three convs, each with a BatchNorm of four tensors (its counter aside)
    with pytest.raises(ArchitectureError, match=rf"closest {deepest.name}: 15 unknown .* 0 missing"):
        infer_backbone(k for k in deeper if not k.startswith("fc."))
    state = {f"backbone.{k}": v for k, v in torchvision.models.resnet50(weights=None).state_dict().items()
             if not k.startswith("fc.")}
    with pytest.raises(ArchitectureError, match=r"head layers \[\] match no head"):
        infer_architecture(state)
    with pytest.raises(ArchitectureError, match="keys outside backbone"):
        infer_architecture({**state, "fc.weight": 0})
    v2 = DualNet("resnet50", "v2").state_dict()
    with pytest.raises(ArchitectureError, match="pass --backbone resnet50 --head v2"):
        check_architecture(v2, "resnet50", "v0", "study.pth")
    with pytest.raises(ArchitectureError, match="holds backbone resnet50 with head v2, not resnet18 with v2"):
        check_architecture(v2, BACKBONES["resnet18"], HEADS["v2"], "study.pth")
    check_architecture(v2, BACKBONES["resnet50"], HEADS["v2"])
    check_architecture(v2, "resnet50", "v2")


def test_every_list_of_choices_is_declared_once():
    fields = {f.name: f.metadata.get("choices") for f in config_module.dataclasses.fields(config_module.TrainConfig)}
    assert fields["backbone"] == tuple(BACKBONES)
    assert fields["head"] == tuple(HEADS)
    assert fields["augment"] is MODES
    assert fields["scheduler"] is SCHEDULERS
    assert fields["cyclic_mode"] is CYCLIC_MODES


def _study_model(head: str) -> nn.Module:
    """The study's dual model layout: ``backbone`` (resnet50, fc = Identity) and ``classifier``."""
    model = nn.Module()
    model.backbone = torchvision.models.resnet50(weights=None)
    model.backbone.fc = nn.Identity()
    model.classifier = nn.Linear(4096, 8) if head == "v0" else build_head(HEADS[head], 4096)
    return model


@pytest.mark.parametrize("head", list(HEADS))
def test_study_state_dict_becomes_torch_odirs(head):
    torch.manual_seed(0)
    study = _study_model(head).state_dict()
    state = dual_state_dict(study)
    assert infer_architecture(state)[1] is HEADS[head]
    reference = DualNet("resnet50", head)
    reference.load_state_dict(state)  # strict: every key known, none missing
    for key, value in reference.head.state_dict().items():  # v0's study head is a bare Linear: no index
        assert torch.equal(value, study["classifier." + (key.split(".", 1)[1] if head == "v0" else key)])


@pytest.mark.parametrize("wrap", ["plain", "model", "state_dict", "model_state_dict", "ddp"])
def test_checkpoint_wrappers_are_unwrapped(wrap):
    state = {"backbone.conv1.weight": 1, "head.0.weight": 2}
    checkpoint = {
        "plain": state,
        "model": {"model": state, "epoch": 3},
        "state_dict": {"state_dict": state, "config": {"head": "v0"}},
        "model_state_dict": {"model_state_dict": state, "optimizer": {"state": {}}},
        "ddp": {"model": {f"module.{k}": v for k, v in state.items()}},
    }[wrap]
    assert unwrap_state_dict(checkpoint) == state


@pytest.mark.parametrize("bad", [[1, 2], {}, torch.zeros(3), {1: 2}])
def test_a_file_without_state_dict_is_one_error(bad):
    with pytest.raises(CheckpointError, match="holds no state_dict"):
        unwrap_state_dict(bad, source="x.pth")


def test_download_checks_the_hash_in_the_file_name_and_writes_atomically(tmp_path):
    data = b"checkpoint bytes"
    digest = hashlib.sha256(data).hexdigest()[:8]
    good = tmp_path / "src" / f"resnet50-{digest}.pth"
    bad = tmp_path / "src" / "resnet50-00000000.pth"
    good.parent.mkdir()
    good.write_bytes(data)
    bad.write_bytes(data)
    folder = tmp_path / "hub"
    assert download_checkpoint(good.as_uri(), folder).read_bytes() == data
    with pytest.raises(CheckpointNotFoundError, match="sha256"):
        download_checkpoint(bad.as_uri(), folder)
    assert sorted(p.name for p in folder.iterdir()) == [good.name]


def test_mldecoder_layer_checks_its_sizes_and_groups_queries():
    assert MLDecoder().group == 1 and MLDecoder(queries=3).group == 3 and MLDecoder(queries=4).group == 2
    with pytest.raises(ValueError, match="not a multiple of its 8 heads"):
        MLDecoder(dim=100)
    with pytest.raises(ValueError, match="1 to 8 queries"):
        MLDecoder(queries=9)
    module = MLDecoderModule(MLDecoder(queries=3, dim=16, heads=2, ff=32), channels=5)
    assert module.group_weight.shape == (3, 16, 3) and module.group_bias.shape == (8,)
    assert set(module.state_dict()) == set(MLDecoder.state_names)
    left, right = torch.randn(2, 5, 3, 4), torch.randn(2, 5, 2, 2)
    assert module.eval()(left, right).shape == (2, 8)
