"""The Vision Transformer family (torchvision's ``vit_*``, Dosovitskiy et al., ICLR 2021): its spec, torch key
layout, initialisation and the resampling of its position embeddings to other input sizes.

The network: a ``patch_size`` x ``patch_size`` / ``patch_size`` conv (``conv_proj``) makes one token per patch,
a learned class token is put first, the position embeddings (``encoder.pos_embedding``, one per token of a
``image_size`` input) are added, then ``blocks[0]`` pre-norm encoder blocks (LayerNorm, multi-head
self-attention, residual; LayerNorm, MLP with exact GELU, residual) and a final LayerNorm (``encoder.ln``).
The pooled features are the class token after ``encoder.ln`` (torchvision classifies from it); the feature
map of a head on maps (and Grad-CAM's) is the patch tokens after ``encoder.ln`` on their (h, w) grid.

Inputs of another size than ``image_size`` (a multiple of the patch size) get the position embeddings
resampled to their grid as timm's ``resample_abs_pos_embed`` does: the class token's embedding kept, the
patch embeddings on their square grid resized bicubic with antialiasing (torch's
``interpolate(mode="bicubic", antialias=True, align_corners=False)``); :func:`resample_matrix` is that
resize as a matrix, the same numbers in both frameworks.
"""

from __future__ import annotations

import math
import re

import numpy as np

from odir_core.model.backbone import BackboneSpec
from odir_core.model.torch_init import trunc_normal, xavier_uniform

NAME = "vit"
EPSILON = 1e-6  # every LayerNorm's
POSITION_STD = 0.02  # torchvision's normal_ init of encoder.pos_embedding
MLP_BIAS_STD = 1e-6  # torchvision's normal_ init of the MLP biases
CUBIC_A = -0.5  # the cubic kernel of torch's antialiased bicubic resize (PIL's)


def layer_prefix(i: int) -> str:
    """The torchvision module path of encoder block ``i``."""
    return f"encoder.layers.encoder_layer_{i}"


def state_keys(layers: int) -> frozenset[str]:
    """torchvision VisionTransformer state_dict keys without ``heads.head``."""
    keys = ["class_token", "conv_proj.weight", "conv_proj.bias", "encoder.pos_embedding",
            "encoder.ln.weight", "encoder.ln.bias"]
    for i in range(layers):
        prefix = layer_prefix(i)
        keys += [f"{prefix}.{m}.{p}" for m in ("ln_1", "ln_2", "mlp.0", "mlp.3", "self_attention.out_proj")
                 for p in ("weight", "bias")]
        keys += [f"{prefix}.self_attention.in_proj_weight", f"{prefix}.self_attention.in_proj_bias"]
    return frozenset(keys)


def backbone(name: str, patch_size: int, layers: int, heads: int, hidden: int, mlp_dim: int,
             checkpoints: dict[str, str], image_size: int = 224) -> BackboneSpec:
    """torchvision's ``name``: ``layers`` blocks of width ``hidden`` with ``heads`` heads and an MLP of
    ``mlp_dim``, position embeddings for ``image_size`` px inputs."""
    return BackboneSpec(
        name=name, family=NAME, features=hidden, torchvision=name, classifier="heads.head",
        imagenet_checkpoints=checkpoints, gradcam_stage="encoder.ln", blocks=(layers,), patch_size=patch_size,
        heads=heads, mlp_dim=mlp_dim, image_size=image_size, state_keys=state_keys(layers),
    )


def grid(spec: BackboneSpec) -> int:
    """The side of the patch grid the position embeddings are for."""
    return spec.image_size // spec.patch_size


def _cubic(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    a = CUBIC_A
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def resize_matrix(old: int, new: int) -> np.ndarray:
    """(new, old): torch's one-dimensional antialiased bicubic resize from ``old`` to ``new`` samples
    (``align_corners=False``), the weights of each output over the inputs (torch's ``_upsample_bicubic2d_aa``)."""
    scale = old / new
    support = 2.0 * scale if scale >= 1.0 else 2.0
    inverse = 1.0 / scale if scale >= 1.0 else 1.0
    matrix = np.zeros((new, old))
    for i in range(new):
        center = scale * (i + 0.5)
        low = max(int(center - support + 0.5), 0)
        high = min(int(center + support + 0.5), old)
        taps = np.arange(low, high)
        weights = _cubic((taps - center + 0.5) * inverse)
        matrix[i, low:high] = weights / weights.sum()
    return matrix


def resample_matrix(old: int, new: tuple[int, int]) -> np.ndarray:
    """(new_h * new_w, old * old): the patch position embeddings of an ``old`` x ``old`` grid (row-major) to a
    ``new`` grid, as timm's ``resample_abs_pos_embed`` (bicubic, antialiased, align_corners False)."""
    return np.kron(resize_matrix(old, new[0]), resize_matrix(old, new[1]))


def resample_position_embedding(embedding: np.ndarray, new: tuple[int, int]) -> np.ndarray:
    """(1, 1 + old^2, C) -> (1, 1 + new_h * new_w, C): the class token's embedding kept, the others resampled."""
    old = math.isqrt(embedding.shape[1] - 1)
    patches = np.einsum("nm,bmc->bnc", resample_matrix(old, new), embedding[:, 1:].astype(np.float64))
    return np.concatenate([embedding[:, :1], patches.astype(embedding.dtype)], axis=1)


def initial_weight(key: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray | None:
    """torchvision's VisionTransformer initialisation: ``conv_proj`` weight ``trunc_normal_(std=sqrt(1 /
    fan_in))``; class token zero; position embeddings normal (std 0.02); the MLP's Linears Xavier-uniform with
    normal (std 1e-6) biases; the attention's packed ``in_proj_weight`` Xavier-uniform, ``in_proj_bias`` zero,
    ``out_proj.weight`` ``nn.Linear``'s uniform +-1/sqrt(fan_in). None for what the family has no rule for
    (zero biases, LayerNorms)."""
    if key == "conv_proj.weight":
        return trunc_normal(shape, math.sqrt(1.0 / math.prod(shape[1:])), rng)
    if key == "class_token" or key.endswith("in_proj_bias"):
        return np.zeros(shape)
    if key == "encoder.pos_embedding":
        return rng.normal(0.0, POSITION_STD, size=shape)
    if key.endswith(("mlp.0.weight", "mlp.3.weight", "in_proj_weight")):
        return xavier_uniform(shape, rng)
    if key.endswith(("mlp.0.bias", "mlp.3.bias")):
        return rng.normal(0.0, MLP_BIAS_STD, size=shape)
    if key.endswith("out_proj.weight"):
        bound = 1.0 / math.sqrt(shape[1])
        return rng.uniform(-bound, bound, size=shape)
    return None


def gradcam_stage(spec: BackboneSpec, uses_maps: bool) -> str:
    """The torch module whose output tokens Grad-CAM explains, on their patch grid: ``encoder.ln``'s (the feature
    map) for a head on feature maps. A head on the class token gets no gradient from the patch tokens after the
    last block (each token is normalised on its own and the class token is read alone), so for it the tokens
    entering the last block are explained (the output of the block before), through which the last block's
    attention reaches the class token."""
    if uses_maps or spec.blocks[0] < 2:
        return spec.gradcam_stage
    return layer_prefix(spec.blocks[0] - 2)


def token_grid(tokens: np.ndarray) -> np.ndarray:
    """One image's tokens (1 + s * s, C), class token first, -> its patch tokens on their grid (s, s, C)."""
    side = math.isqrt(tokens.shape[0] - 1)
    return tokens[1:].reshape(side, side, tokens.shape[-1])


def depth_count(spec: BackboneSpec) -> int:
    """Depths of layer-wise learning-rate decay (``odir_core.training.param_groups``): one per encoder block."""
    return spec.blocks[0]


def depth_of(key: str, spec: BackboneSpec) -> int:
    """The depth of a backbone key as BEiT's and RETFound's ``get_layer_id_for_vit``: 0 for the patch embedding,
    class token and position embeddings, ``i + 1`` for encoder block ``i``, one past the last block for the
    final LayerNorm (``encoder.ln``)."""
    if key in ("class_token", "encoder.pos_embedding") or key.startswith("conv_proj."):
        return 0
    block = re.match(r"encoder\.layers\.encoder_layer_(\d+)\.", key)
    return int(block.group(1)) + 1 if block else depth_count(spec) + 1
