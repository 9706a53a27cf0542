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

The same network in timm's layout (``spec.layout == "timm"``, timm's ``VisionTransformer``: RETFound, Zhou et
al., Nature 2023) has other module names (``patch_embed.proj``, ``cls_token``, ``pos_embed``, ``blocks.<i>``
with ``norm1``, ``attn.qkv`` (the packed q, k, v projection), ``attn.proj``, ``norm2``, ``mlp.fc1``,
``mlp.fc2``) and, with ``spec.global_pool``, other features: the mean of the patch tokens after the last block,
normalised by ``fc_norm`` (timm's ``global_pool="avg"``; the final ``norm`` is then not part of the network).
Its feature map is the patch tokens entering that pooling, the output of the last block, on their grid: what
Grad-CAM explains; a head on maps gets it normalised by ``fc_norm`` at every position (``spec.map_norm``).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping

import numpy as np

from odir_core.model.backbone import BackboneSpec
from odir_core.model.torch_init import trunc_normal, xavier_uniform

NAME = "vit"
EPSILON = 1e-6  # every LayerNorm's
POSITION_STD = 0.02  # torchvision's normal_ init of encoder.pos_embedding
MLP_BIAS_STD = 1e-6  # torchvision's normal_ init of the MLP biases
CUBIC_A = -0.5  # the cubic kernel of torch's antialiased bicubic resize (PIL's)
TIMM = "timm"  # the layout of timm's VisionTransformer
TIMM_STD = 0.02  # timm's trunc_normal_ of pos_embed and of every Linear weight
TIMM_CLS_STD = 1e-6  # timm's normal_ init of cls_token
# the class token's and the position embeddings' state_dict keys per layout
TOKEN_KEYS = {"torchvision": ("class_token", "encoder.pos_embedding"), TIMM: ("cls_token", "pos_embed")}


def layer_prefix(i: int) -> str:
    """The torchvision module path of encoder block ``i``."""
    return f"encoder.layers.encoder_layer_{i}"


def block_prefix(spec: BackboneSpec, i: int) -> str:
    """The torch module path of block ``i`` of ``spec``'s layout."""
    return f"blocks.{i}" if spec.layout == TIMM else layer_prefix(i)


def position_key(spec: BackboneSpec) -> str:
    """The state_dict key of ``spec``'s position embeddings."""
    return TOKEN_KEYS[spec.layout][1]


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


def timm_state_keys(layers: int, global_pool: bool) -> frozenset[str]:
    """timm VisionTransformer state_dict keys without ``head``: with ``global_pool`` (``"avg"``) its ``fc_norm``,
    else its final ``norm``."""
    final = "fc_norm" if global_pool else "norm"
    keys = ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
            f"{final}.weight", f"{final}.bias"]
    for i in range(layers):
        keys += [f"blocks.{i}.{m}.{p}" for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
                 for p in ("weight", "bias")]
    return frozenset(keys)


def timm_backbone(name: str, patch_size: int, layers: int, heads: int, hidden: int, mlp_dim: int, *,
                  weights_source: str, ignored_keys: tuple[str, ...] = (), image_size: int = 224) -> BackboneSpec:
    """A timm VisionTransformer with global average pooling of its patch tokens and ``fc_norm`` (RETFound's
    fine-tuning model): ``layers`` blocks of width ``hidden``, ``heads`` heads, an MLP of ``mlp_dim``, qkv bias,
    LayerNorm eps 1e-6, position embeddings for ``image_size`` px inputs; its weights from ``weights_source``."""
    return BackboneSpec(
        name=name, family=NAME, features=hidden, torchvision="", classifier="head", imagenet_checkpoints={},
        gradcam_stage=f"blocks.{layers - 1}", blocks=(layers,), patch_size=patch_size, heads=heads,
        mlp_dim=mlp_dim, image_size=image_size, state_keys=timm_state_keys(layers, True), layout=TIMM,
        global_pool=True, map_norm="fc_norm", ignored_keys=ignored_keys, weights_source=weights_source,
    )


def checkpoint_state(state: Mapping, spec: BackboneSpec) -> dict:
    """A published checkpoint's backbone state for ``spec``: the keys it ignores dropped (``spec.ignored_keys``),
    the position embeddings resampled to the spec's grid where they were made for another (torchvision's SWAG
    files: 384 or 512 px), as timm does when it loads such a file (a numpy array then); with ``global_pool`` and
    no ``fc_norm`` in the file (a pretrained encoder: RETFound's MAE file), ``fc_norm`` starts as LayerNorm
    starts (weight 1, bias 0), as RETFound's fine-tuning starts it."""
    state = {k: v for k, v in state.items() if not any(re.match(p, k) for p in spec.ignored_keys)}
    key = position_key(spec)
    position = state.get(key)
    if position is not None and position.shape[1] != 1 + grid(spec) ** 2:
        state[key] = resample_position_embedding(np.asarray(position), (grid(spec),) * 2)
    if spec.global_pool and "fc_norm.weight" not in state:
        state["fc_norm.weight"] = np.ones(spec.features, np.float32)
        state["fc_norm.bias"] = np.zeros(spec.features, np.float32)
    return state


def at_depth(spec: BackboneSpec, depth: int) -> BackboneSpec:
    """``spec`` with ``depth`` blocks (its keys and Grad-CAM stage to match), named after its depth: a small model
    of the same layout."""
    if spec.layout == TIMM:
        return dataclasses.replace(spec, name=f"{spec.name}_depth{depth}", blocks=(depth,),
                                   state_keys=timm_state_keys(depth, spec.global_pool),
                                   gradcam_stage=f"blocks.{depth - 1}")
    return dataclasses.replace(spec, name=f"{spec.name}_depth{depth}", blocks=(depth,), state_keys=state_keys(depth))


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


def initial_weight(key: str, shape: tuple[int, ...], rng: np.random.Generator,
                   spec: BackboneSpec) -> np.ndarray | None:
    """torchvision's VisionTransformer initialisation: ``conv_proj`` weight ``trunc_normal_(std=sqrt(1 /
    fan_in))``; class token zero; position embeddings normal (std 0.02); the MLP's Linears Xavier-uniform with
    normal (std 1e-6) biases; the attention's packed ``in_proj_weight`` Xavier-uniform, ``in_proj_bias`` zero,
    ``out_proj.weight`` ``nn.Linear``'s uniform +-1/sqrt(fan_in). In timm's layout, timm's: ``pos_embed`` and
    every Linear weight truncated normal (std 0.02), ``cls_token`` normal (std 1e-6), ``patch_embed.proj``
    ``nn.Conv2d``'s uniform +-1/sqrt(fan_in), weight and bias. None for what the family has no rule for (zero
    biases, LayerNorms)."""
    if key in ("patch_embed.proj.weight", "patch_embed.proj.bias"):
        bound = 1.0 / math.sqrt(3 * spec.patch_size ** 2)
        return rng.uniform(-bound, bound, size=shape)
    if key == "pos_embed" or key.endswith(("attn.qkv.weight", "attn.proj.weight", "fc1.weight", "fc2.weight")):
        return trunc_normal(shape, TIMM_STD, rng)
    if key == "cls_token":
        return rng.normal(0.0, TIMM_CLS_STD, size=shape)
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
    attention reaches the class token. With ``global_pool`` every patch token after the last block reaches the
    features, so its output is explained."""
    if uses_maps or spec.global_pool or spec.blocks[0] < 2:
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
    class token and position embeddings, ``i + 1`` for block ``i``, one past the last block for what follows
    (torchvision's ``encoder.ln``; timm's ``norm`` / ``fc_norm``)."""
    if key in TOKEN_KEYS[spec.layout] or key.startswith(("conv_proj.", "patch_embed.")):
        return 0
    block = re.match(r"(?:encoder\.layers\.encoder_layer_|blocks\.)(\d+)\.", key)
    return int(block.group(1)) + 1 if block else depth_count(spec) + 1
