"""torchvision's VisionTransformer for inputs of any size (``odir_core.model.families.vit``): the same modules
and state_dict keys, built from the spec, with the position embeddings resampled to the input's patch grid
(timm's ``resample_abs_pos_embed``: bicubic, antialiased, the class token's kept) where it differs from the
one they were made for; at that size the forward pass is torchvision's. A spec in timm's layout (RETFound) is
timm's own ``VisionTransformer`` with the spec's arguments, which resamples its position embeddings itself
(``dynamic_img_size``)."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torchvision.models.vision_transformer import VisionTransformer as TorchvisionViT

from odir_core.model.backbone import BackboneSpec
from odir_core.model.families.vit import EPSILON, TIMM


def resample_position_embedding(embedding: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(1, 1 + n^2, C) position embeddings for an (h, w) patch grid, as timm's ``resample_abs_pos_embed``."""
    old = int(round((embedding.shape[1] - 1) ** 0.5))
    if (old, old) == tuple(grid):
        return embedding
    patches = embedding[:, 1:].reshape(1, old, old, -1).permute(0, 3, 1, 2)
    patches = F.interpolate(patches.float(), size=tuple(grid), mode="bicubic", antialias=True, align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1).to(embedding.dtype)
    return torch.cat([embedding[:, :1], patches], dim=1)


class VisionTransformer(TorchvisionViT):
    """torchvision's VisionTransformer whose input may be any multiple of the patch size."""

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, H, W) -> every token after ``encoder.ln`` (N, 1 + h * w, hidden_dim), class token first."""
        x = self.conv_proj(x)
        n, _, h, w = x.shape
        x = x.reshape(n, self.hidden_dim, h * w).permute(0, 2, 1)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], dim=1)
        encoder = self.encoder
        x = x + resample_position_embedding(encoder.pos_embedding, (h, w))
        return encoder.ln(encoder.layers(encoder.dropout(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(self.tokens(x)[:, 0])


def timm_vision_transformer(spec: BackboneSpec) -> torch.nn.Module:
    """timm's VisionTransformer of ``spec`` as RETFound builds it (qkv bias, LayerNorm eps 1e-6, global average
    pooling of the patch tokens then ``fc_norm``; no classes), for inputs of any multiple of the patch size."""
    from timm.models.vision_transformer import VisionTransformer as TimmViT

    return TimmViT(img_size=spec.image_size, patch_size=spec.patch_size, embed_dim=spec.features,
                   depth=spec.blocks[0], num_heads=spec.heads, mlp_ratio=spec.mlp_dim / spec.features, qkv_bias=True,
                   norm_layer=partial(torch.nn.LayerNorm, eps=EPSILON), num_classes=0,
                   global_pool="avg" if spec.global_pool else "token", dynamic_img_size=True)


def vision_transformer(spec: BackboneSpec) -> torch.nn.Module:
    """The VisionTransformer of ``spec`` (its depth, width, heads, MLP and position-embedding size): timm's for
    timm's layout, else torchvision's."""
    if spec.layout == TIMM:
        return timm_vision_transformer(spec)
    return VisionTransformer(image_size=spec.image_size, patch_size=spec.patch_size, num_layers=spec.blocks[0],
                             num_heads=spec.heads, hidden_dim=spec.features, mlp_dim=spec.mlp_dim)


def token_map(tokens: torch.Tensor, images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """The patch tokens (N, 1 + h * w, C) of ``images`` (N, 3, H, W) on their grid, (N, C, h, w)."""
    h, w = images.shape[-2] // patch_size, images.shape[-1] // patch_size
    return tokens[:, 1:].reshape(tokens.shape[0], h, w, -1).permute(0, 3, 1, 2)
