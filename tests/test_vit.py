"""The Vision Transformer family's framework-free parts (``odir_core.model.families.vit``): the resampling of the
position embeddings against torch's own antialiased bicubic resize (what timm's ``resample_abs_pos_embed`` calls),
and the initialisation rules against torchvision's draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from odir_core.model.checkpoints import backbone_state_dict
from odir_core.model.families import vit


@pytest.mark.parametrize("new", [(2, 2), (4, 4), (7, 7), (13, 13), (28, 28), (3, 5)])
def test_resampled_position_embeddings_are_torchs_antialiased_bicubic(new):
    """timm's resample_abs_pos_embed: the class token's embedding kept, the 14 x 14 grid's resized with
    ``F.interpolate(mode="bicubic", antialias=True, align_corners=False)`` (down and up), in float64 (torch's
    float32 kernel rounds its weights to a few 1e-6)."""
    embedding = torch.randn(1, 1 + 14 * 14, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grid = embedding[:, 1:].reshape(1, 14, 14, 6).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=new, mode="bicubic", antialias=True, align_corners=False)
    want = torch.cat([embedding[:, :1], want.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], 6)], dim=1).numpy()
    got = vit.resample_position_embedding(embedding.numpy(), new)
    assert got.shape == want.shape and got.dtype == np.float64
    np.testing.assert_array_equal(got[:, 0], want[:, 0])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_resampling_to_the_same_grid_is_the_identity():
    np.testing.assert_allclose(vit.resample_matrix(14, (14, 14)), np.eye(196), atol=1e-12)
    assert np.allclose(vit.resample_matrix(14, (4, 4)).sum(axis=1), 1.0)  # each output a weighted mean


def test_a_checkpoint_for_another_size_gets_its_position_embeddings_resampled():
    """torchvision's SWAG files (vit_b_16 at 384 px: 24 x 24 patches) load into the 224 px spec (14 x 14) with
    their position embeddings resampled as timm does on loading; the other tensors and a 224 px file unchanged."""
    embedding = torch.randn(1, 1 + 24 * 24, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grid = embedding[:, 1:].reshape(1, 24, 24, 6).permute(0, 3, 1, 2)
    want = F.interpolate(grid, size=(14, 14), mode="bicubic", antialias=True, align_corners=False)
    want = torch.cat([embedding[:, :1], want.permute(0, 2, 3, 1).reshape(1, 196, 6)], dim=1).numpy()
    other = torch.ones(3)
    state = backbone_state_dict({"encoder.pos_embedding": embedding, "encoder.ln.weight": other,
                                 "heads.head.weight": torch.zeros(2, 6)}, "vit_b_16")
    assert set(state) == {"encoder.pos_embedding", "encoder.ln.weight"} and state["encoder.ln.weight"] is other
    np.testing.assert_allclose(state["encoder.pos_embedding"], want, rtol=0, atol=1e-12)
    same = torch.randn(1, 197, 6)
    assert backbone_state_dict({"encoder.pos_embedding": same}, "vit_b_16")["encoder.pos_embedding"] is same
