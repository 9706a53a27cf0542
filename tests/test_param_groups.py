"""odir_core.training.param_groups: layer-wise learning-rate decay depths of every backbone family and the
weight-decay exemptions, against hand-counted depths (BEiT's / RETFound's ``get_layer_id_for_vit`` for the ViT)."""

import pytest

from odir_core.model.model_spec import BACKBONES
from odir_core.training.param_groups import decays, depth, lr_scale, param_groups

VIT = BACKBONES["vit_b_16"]  # 12 blocks: depths 0 .. 13


@pytest.mark.parametrize("key,want", [
    ("backbone.conv_proj.weight", 0),  # patch embedding
    ("backbone.class_token", 0),
    ("backbone.encoder.pos_embedding", 0),
    ("backbone.encoder.layers.encoder_layer_0.ln_1.weight", 1),
    ("backbone.encoder.layers.encoder_layer_11.mlp.3.bias", 12),
    ("backbone.encoder.ln.weight", 13),  # the final norm: L + 1
    ("head.0.weight", 13),
])
def test_vit_depths_are_beit_layer_ids(key, want):
    assert depth(key, VIT) == want
    assert lr_scale(key, VIT, 0.65) == pytest.approx(0.65 ** (13 - want), rel=1e-15)


@pytest.mark.parametrize("key,want", [  # RETFound: timm's keys, 24 blocks: depths 0 .. 25
    ("backbone.patch_embed.proj.weight", 0),
    ("backbone.cls_token", 0),
    ("backbone.pos_embed", 0),
    ("backbone.blocks.0.attn.qkv.weight", 1),
    ("backbone.blocks.23.mlp.fc2.bias", 24),
    ("backbone.fc_norm.weight", 25),
    ("head.0.weight", 25),
])
def test_retfound_depths_are_its_layer_ids(key, want):
    assert depth(key, BACKBONES["retfound"]) == want


@pytest.mark.parametrize("name,key,want", [
    ("resnet50", "backbone.conv1.weight", 0),
    ("resnet50", "backbone.bn1.bias", 0),
    ("resnet50", "backbone.layer1.0.conv1.weight", 1),
    ("resnet50", "backbone.layer4.2.bn3.weight", 4),
    ("resnet50", "head.0.bias", 5),
    ("densenet121", "backbone.features.conv0.weight", 0),
    ("densenet121", "backbone.features.denseblock2.denselayer3.conv1.weight", 2),
    ("densenet121", "backbone.features.transition3.conv.weight", 3),
    ("densenet121", "backbone.features.norm5.weight", 5),
    ("efficientnet_b0", "backbone.features.0.0.weight", 0),
    ("efficientnet_b0", "backbone.features.7.0.block.3.1.weight", 7),
    ("efficientnet_b0", "backbone.features.8.0.weight", 8),
    ("efficientnet_b0", "head.0.weight", 8),
    ("convnext_tiny", "backbone.features.0.0.weight", 0),
    ("convnext_tiny", "backbone.features.1.2.layer_scale", 1),
    ("convnext_tiny", "backbone.features.2.1.weight", 2),  # the downsampling before stage 2
    ("convnext_tiny", "backbone.features.7.0.block.0.weight", 4),
    ("convnext_tiny", "backbone.classifier.0.weight", 5),
])
def test_cnn_depths_are_stages(name, key, want):
    assert depth(key, BACKBONES[name]) == want


@pytest.mark.parametrize("name", list(BACKBONES))
def test_every_backbone_key_gets_a_depth_from_stem_to_top(name):
    spec = BACKBONES[name]
    depths = {depth("backbone." + key, spec) for key in spec.state_keys}
    top = depth("head.0.weight", spec)
    assert min(depths) == 0 and max(depths) <= top and depths >= set(range(0, top - 1))


def test_decay_exemptions_follow_the_recipe():
    assert not decays("backbone.encoder.layers.encoder_layer_0.ln_1.bias", (768,))
    assert not decays("backbone.class_token", (1, 1, 768))
    assert not decays("backbone.encoder.pos_embedding", (1, 197, 768))
    assert not decays("backbone.cls_token", (1, 1, 1024)) and not decays("backbone.pos_embed", (1, 197, 1024))
    assert decays("backbone.conv_proj.weight", (768, 3, 16, 16))
    assert decays("backbone.features.1.2.layer_scale", (96, 1, 1))  # torch's (C, 1, 1): not 1-D


def test_groups_by_scale_then_decay_head_first():
    weights = [("backbone.conv_proj.weight", (8, 3, 16, 16)), ("backbone.conv_proj.bias", (8,)),
               ("backbone.encoder.layers.encoder_layer_11.mlp.0.weight", (32, 8)), ("head.0.weight", (8, 16)),
               ("head.0.bias", (8,)), ("backbone.encoder.ln.bias", (8,))]
    groups = param_groups(weights, VIT, 0.5, exempt=True)
    assert [(g.keys, g.lr_scale, g.decay) for g in groups] == [
        (("head.0.weight",), 1.0, True),
        (("head.0.bias", "backbone.encoder.ln.bias"), 1.0, False),
        (("backbone.encoder.layers.encoder_layer_11.mlp.0.weight",), 0.5, True),
        (("backbone.conv_proj.weight",), 0.5 ** 13, True),
        (("backbone.conv_proj.bias",), 0.5 ** 13, False),
    ]
    # no layer decay, no exemptions (SGD's default): one group, as before
    assert [(g.keys, g.lr_scale, g.decay) for g in param_groups(weights, VIT, 1.0, exempt=False)] == [
        (tuple(key for key, _ in weights), 1.0, True)]
