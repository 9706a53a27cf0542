"""RETFound's spec (``retfound``: timm's ViT-L/16 with global average pooling and fc_norm) against timm's own
model, its published files made ready for it (``odir_core.model.checkpoints.backbone_state_dict``), timm's
resampling of its position embeddings, its initialisation rules, and the message for its missing ImageNet file."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from timm.layers import resample_abs_pos_embed

from odir_core.model.checkpoints import CheckpointNotFoundError, backbone_state_dict, imagenet_checkpoint
from odir_core.model.families import vit
from odir_core.model.initial_weights import initial_state
from odir_core.model.model_spec import BACKBONES, infer_backbone
from torch_odir.model import build_backbone

TIMM_SPECS = [name for name, spec in BACKBONES.items() if spec.layout == vit.TIMM]
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_retfound_is_registered_in_the_vit_family():
    spec = BACKBONES["retfound"]
    assert TIMM_SPECS == ["retfound"] and spec.family == vit.NAME
    assert (spec.patch_size, spec.blocks, spec.heads, spec.features, spec.mlp_dim) == (16, (24,), 16, 1024, 4096)
    np.testing.assert_allclose(spec.mean, IMAGENET_MEAN)  # RETFound's fine-tuning normalisation
    np.testing.assert_allclose(spec.std, IMAGENET_STD)


@pytest.mark.parametrize("name", TIMM_SPECS)
def test_registry_matches_timm(name):
    """torch_odir's backbone is timm's VisionTransformer with RETFound's arguments: the spec's keys (no head, no
    final norm: global pooling then fc_norm), widths, qkv bias, LayerNorm eps 1e-6, Grad-CAM's module."""
    spec = BACKBONES[name]
    with torch.device("meta"):
        model = build_backbone(spec)
    assert type(model).__module__ == "timm.models.vision_transformer"
    assert set(model.state_dict()) == spec.state_keys
    assert model.global_pool == "avg" and isinstance(model.norm, torch.nn.Identity)
    assert isinstance(model.fc_norm, torch.nn.LayerNorm) and model.fc_norm.eps == 1e-6
    block = model.blocks[0]
    assert block.attn.num_heads == spec.heads and block.attn.qkv.bias is not None and block.norm1.eps == 1e-6
    assert (block.mlp.fc1.out_features, model.embed_dim, len(model.blocks)) == (spec.mlp_dim, spec.features, 24)
    assert tuple(model.pos_embed.shape) == (1, 1 + vit.grid(spec) ** 2, spec.features)
    assert model.get_submodule(spec.gradcam_stage) is model.blocks[-1]
    assert infer_backbone(spec.state_keys) is spec


def _mae_state(spec) -> dict[str, np.ndarray]:
    """A MAE-pretrained file's keys: the encoder's (with its final norm), the decoder's and the mask token."""
    state = {key: np.full((2,), 0.5, np.float32) for key in vit.timm_state_keys(spec.blocks[0], False)}
    state["pos_embed"] = np.random.default_rng(0).normal(size=(1, 1 + vit.grid(spec) ** 2, 4))
    return state | {"mask_token": np.zeros((1, 1, 3)), "decoder_embed.weight": np.zeros((3, 2)),
                    "decoder_blocks.0.attn.qkv.weight": np.zeros((9, 3)), "decoder_norm.weight": np.ones(3),
                    "decoder_pred.bias": np.zeros(5), "decoder_pos_embed": np.zeros((1, 197, 3))}


def test_a_published_file_keeps_the_encoder_and_starts_fc_norm_as_retfound_does():
    """The decoder, mask token and the encoder's final norm (unused with global pooling) dropped; fc_norm weight 1,
    bias 0 (a fresh LayerNorm, as RETFound's fine-tuning starts it); the encoder's tensors kept as they are."""
    spec = vit.at_depth(BACKBONES["retfound"], 2)
    mae = _mae_state(spec)
    state = backbone_state_dict(mae, spec)
    assert set(state) == spec.state_keys
    assert all(state[key] is mae[key] for key in state if not key.startswith("fc_norm"))
    np.testing.assert_array_equal(state["fc_norm.weight"], np.ones(spec.features))
    np.testing.assert_array_equal(state["fc_norm.bias"], np.zeros(spec.features))
    tuned = {**state, "fc_norm.weight": np.full(spec.features, 2.0), "head.weight": np.zeros((5, spec.features))}
    assert backbone_state_dict(tuned, spec)["fc_norm.weight"][0] == 2.0  # a fine-tuned file's fc_norm kept


@pytest.mark.parametrize("new", [(2, 2), (3, 3), (28, 28), (3, 5)])
def test_position_embeddings_are_resampled_as_timm_does(new):
    """The family's resampling (the Keras model's, and a file's for another size) is timm's
    ``resample_abs_pos_embed`` for the timm layout's one class token: float32 rounding apart."""
    embedding = torch.randn(1, 1 + 14 * 14, 8, generator=torch.Generator().manual_seed(2))
    want = resample_abs_pos_embed(embedding, list(new), num_prefix_tokens=1).numpy()
    got = vit.resample_position_embedding(embedding.numpy(), new)
    np.testing.assert_array_equal(got[:, 0], want[:, 0])
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)


def test_a_file_for_another_size_is_resampled_to_the_spec_as_timm_loads_it():
    spec = vit.at_depth(BACKBONES["retfound"], 2)
    mae = _mae_state(spec)
    mae["pos_embed"] = torch.randn(1, 1 + 28 * 28, 4, generator=torch.Generator().manual_seed(3)).numpy()
    want = resample_abs_pos_embed(torch.from_numpy(mae["pos_embed"]), [14, 14], num_prefix_tokens=1).numpy()
    np.testing.assert_allclose(backbone_state_dict(mae, spec)["pos_embed"], want, rtol=0, atol=2e-6)


def test_initial_draws_follow_timm():
    """The starting weights both trainers draw for ``--weights none``: timm's distributions (std within 10%, the
    constants equal), from timm's own freshly initialised model."""
    spec = vit.at_depth(BACKBONES["retfound"], 1)
    torch.manual_seed(0)
    reference = {f"backbone.{k}": v.numpy() for k, v in build_backbone(spec).state_dict().items()}
    drawn = initial_state({k: v.shape for k, v in reference.items()}, spec, seed=0, draw_backbone=True)
    assert drawn.keys() == reference.keys()
    for key, ours in drawn.items():
        theirs = reference[key]
        assert ours.shape == theirs.shape and ours.dtype == theirs.dtype, key
        if theirs.std() == 0:
            np.testing.assert_array_equal(ours, theirs, err_msg=key)
        elif theirs.size >= 1000:
            assert abs(ours.std() / theirs.std() - 1) < 0.1, (key, ours.std(), theirs.std())
            assert abs(ours.mean()) < 0.1 * theirs.std(), key
    assert 0 < drawn["backbone.cls_token"].std() < 1e-5  # timm's normal(std 1e-6), not torchvision's zeros


def test_no_imagenet_file_says_where_retfounds_weights_are():
    with pytest.raises(CheckpointNotFoundError, match=r"retfound has no torchvision ImageNet checkpoint: download "
                       r"its weights \(RETFound_cfp_weights.pth from github.com/rmaphoh/RETFound_MAE, .*huggingface"
                       r".*pass the file's path as weights \(--weights PATH\)"):
        imagenet_checkpoint(None, "retfound")
