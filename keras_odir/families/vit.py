"""Vision Transformer backbones in Keras 3, layer for layer torchvision's ``vit_*`` up to ``heads.head`` (the
Linear it replaces by ``Identity``), for inputs of any multiple of the patch size
(``odir_core.model.families.vit``).

torchvision's network: ``conv_proj`` (patch x patch / patch conv) -> one token per patch -> the class token
first -> plus ``encoder.pos_embedding`` (resampled to the input's grid where it differs) -> pre-norm encoder
blocks (``ln_1``, multi-head self-attention, residual; ``ln_2``, ``mlp.0`` Linear with exact GELU, ``mlp.3``
Linear, residual) -> ``encoder.ln`` -> the class token. Layers are named after torchvision's modules with ``.``
as ``_`` (``encoder.layers.encoder_layer_0.ln_1`` -> ``encoder_layers_encoder_layer_0_ln_1``); the class token
and the position embeddings are one :class:`TokenEmbedding` layer, each attention one :class:`SelfAttention`
(weights in torch's layout, the packed ``in_proj_weight``), and the pooling layer (``keras_odir.parts.POOL``)
takes the class token. torchvision's dropouts (rate 0 in ``vit_b_16`` and ``vit_l_16``) are left out.

The same builder makes timm's layout (``spec.layout == "timm"``: RETFound), the layers then named after timm's
modules (``patch_embed_proj``, ``pos_embed`` for ``cls_token`` and ``pos_embed``, ``blocks_<i>_norm1``,
``blocks_<i>_attn`` with the packed ``qkv`` and ``proj``, ``blocks_<i>_norm2``, ``blocks_<i>_mlp_fc1``,
``blocks_<i>_mlp_fc2``) and initialised as timm does; with ``spec.global_pool`` the pooling layer averages the
patch tokens after the last block and ``fc_norm`` follows it.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import layers, ops

import keras_odir.initializers as initializers
from keras_odir.correlation import _softmax
from keras_odir.layers import ChannelsLastConv2D, image_input
from keras_odir.parts import POOL
from odir_core.model.backbone import BackboneSpec, keras_layer_name
from odir_core.model.families.vit import (
    EPSILON,
    MLP_BIAS_STD,
    POSITION_STD,
    TIMM,
    TIMM_CLS_STD,
    TIMM_STD,
    TOKEN_KEYS,
    block_prefix,
    grid,
    resample_matrix,
)

PATCH_GRID = "patch_grid"  # the layer putting a head on maps' patch tokens on their grid (keras_odir.model)


@keras.saving.register_keras_serializable(package="keras_odir")
class TokenEmbedding(layers.Layer):
    """Patch embeddings (B, h, w, C) -> tokens (B, 1 + h * w, C): the learned class token first, plus the
    position embeddings of a ``grid`` x ``grid`` patch grid, resampled to (h, w) where it differs (timm's
    ``resample_abs_pos_embed``, as ``odir_core.model.families.vit.resample_matrix``). Its variables are the
    top-level torch keys ``keys`` (torchvision's ``class_token`` and ``encoder.pos_embedding``, timm's
    ``cls_token`` and ``pos_embed``); ``class_std``: the class token's initial normal draw (0: zeros, as
    torchvision)."""

    torch_path = ""  # its torch names are whole keys

    def __init__(self, grid: int, keys=TOKEN_KEYS["torchvision"], class_std: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.grid = grid
        self.keys = tuple(keys)
        self.class_std = class_std
        self._matrices: dict[tuple[int, int], np.ndarray] = {}  # the resampling matrix per input grid

    def build(self, input_shape):
        channels = input_shape[-1]
        initializer = initializers.RandomNormal(stddev=self.class_std) if self.class_std else "zeros"
        self.class_token = self.add_weight(shape=(1, 1, channels), name="class_token", initializer=initializer)
        self.pos_embedding = self.add_weight(shape=(1, 1 + self.grid * self.grid, channels), name="pos_embedding",
                                             initializer=initializers.RandomNormal(stddev=POSITION_STD))

    def call(self, patches):
        height, width, channels = patches.shape[1:]
        if height is None or width is None:
            raise ValueError("a Vision Transformer needs inputs of a known size (a fixed image_size or a batch)")
        batch = ops.shape(patches)[0]
        tokens = ops.reshape(patches, (batch, height * width, channels))
        position = ops.cast(self.pos_embedding, tokens.dtype)
        if (height, width) != (self.grid, self.grid):
            if (height, width) not in self._matrices:
                self._matrices[height, width] = resample_matrix(self.grid, (height, width)).astype(np.float32)
            matrix = ops.convert_to_tensor(self._matrices[height, width])
            resampled = ops.einsum("nm,bmc->bnc", ops.cast(matrix, tokens.dtype), position[:, 1:])
            position = ops.concatenate([position[:, :1], resampled], axis=1)
        cls = ops.broadcast_to(ops.cast(self.class_token, tokens.dtype), (batch, 1, channels))
        return ops.concatenate([cls, tokens], axis=1) + position

    def compute_output_shape(self, input_shape):
        batch, height, width, channels = input_shape
        return (batch, None if height is None or width is None else 1 + height * width, channels)

    def torch_variables(self) -> dict:
        return {self.keys[0]: (self.class_token, "same"), self.keys[1]: (self.pos_embedding, "same")}

    def get_config(self):
        return {**super().get_config(), "grid": self.grid, "keys": list(self.keys), "class_std": self.class_std}


@keras.saving.register_keras_serializable(package="keras_odir")
class SelfAttention(layers.Layer):
    """torch's ``nn.MultiheadAttention(x, x, x)`` (batch first, no dropout): tokens (B, T, E) -> (B, T, E).
    Weights in torch's layout: the packed ``in_proj_weight`` (3E, E) of q, k and v and ``in_proj_bias``, and
    ``out_proj`` (weight (E, E), bias); initialised as torch does (Xavier-uniform, zero biases, ``nn.Linear``'s
    uniform out_proj weight). With ``layout="timm"`` the same weights are timm's ``Attention``'s ``qkv`` and
    ``proj`` (weight and bias each), drawn as timm draws them (normal, std 0.02; zero biases)."""

    def __init__(self, heads: int, layout: str = "torchvision", **kwargs):
        super().__init__(**kwargs)
        self.heads = heads
        self.layout = layout

    def build(self, input_shape):
        dim = input_shape[-1]
        bound = 1.0 / math.sqrt(dim)
        timm = initializers.RandomNormal(stddev=TIMM_STD)
        self.in_proj_weight = self.add_weight(
            shape=(3 * dim, dim), name="in_proj_weight",
            initializer=timm if self.layout == TIMM else initializers.VarianceScaling(1.0, "fan_avg", "uniform"))
        self.in_proj_bias = self.add_weight(shape=(3 * dim,), name="in_proj_bias", initializer="zeros")
        self.out_proj_weight = self.add_weight(
            shape=(dim, dim), name="out_proj_weight",
            initializer=timm if self.layout == TIMM else initializers.RandomUniform(-bound, bound))
        self.out_proj_bias = self.add_weight(shape=(dim,), name="out_proj_bias", initializer="zeros")

    def call(self, x):
        batch, length, dim = ops.shape(x)[0], ops.shape(x)[1], x.shape[-1]
        head_dim = dim // self.heads
        qkv = ops.matmul(x, ops.transpose(self.in_proj_weight)) + self.in_proj_bias  # (B, T, 3E)
        qkv = ops.transpose(ops.reshape(qkv, (batch, length, 3, self.heads, head_dim)), (2, 0, 3, 1, 4))
        q, k, v = qkv[0] * head_dim ** -0.5, qkv[1], qkv[2]  # (B, heads, T, head_dim)
        weights = _softmax(ops.matmul(q, ops.transpose(k, (0, 1, 3, 2))))
        out = ops.reshape(ops.transpose(ops.matmul(weights, v), (0, 2, 1, 3)), (batch, length, dim))
        return ops.matmul(out, ops.transpose(self.out_proj_weight)) + self.out_proj_bias

    def compute_output_shape(self, input_shape):
        return input_shape

    def torch_variables(self) -> dict:
        names = (("qkv.weight", "qkv.bias", "proj.weight", "proj.bias") if self.layout == TIMM else
                 ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"))
        variables = (self.in_proj_weight, self.in_proj_bias, self.out_proj_weight, self.out_proj_bias)
        return {name: (variable, "same") for name, variable in zip(names, variables)}

    def get_config(self):
        return {**super().get_config(), "heads": self.heads, "layout": self.layout}


@keras.saving.register_keras_serializable(package="keras_odir")
class ClassToken(layers.Layer):
    """Tokens (B, T, C) -> the class token (B, C), torchvision's ``x[:, 0]``."""

    def call(self, tokens):
        return tokens[:, 0]

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])


@keras.saving.register_keras_serializable(package="keras_odir")
class PatchMean(layers.Layer):
    """Tokens (B, 1 + n, C) -> the mean of the patch tokens (B, C), the class token left out (timm's
    ``global_pool="avg"``)."""

    def call(self, tokens):
        return ops.mean(tokens[:, 1:], axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])


@keras.saving.register_keras_serializable(package="keras_odir")
class PatchGrid(layers.Layer):
    """Tokens (B, 1 + s * s, C) -> the patch tokens on their square grid (B, s, s, C), channels_last: the
    feature map of a head on maps and of Grad-CAM."""

    def call(self, tokens):
        length = tokens.shape[1]
        if length is None:  # a symbolic size: the grid's side from the tensor's shape
            side = ops.cast(ops.round(ops.sqrt(ops.cast(ops.shape(tokens)[1] - 1, "float32"))), "int32")
        else:
            side = self._side(length)
        return ops.reshape(tokens[:, 1:], (ops.shape(tokens)[0], side, side, tokens.shape[-1]))

    @staticmethod
    def _side(length: int) -> int:
        side = math.isqrt(length - 1)
        if side * side != length - 1:
            raise ValueError(f"{length} tokens are not a class token and a square patch grid")
        return side

    def compute_output_shape(self, input_shape):
        side = None if input_shape[1] is None else self._side(input_shape[1])
        return (input_shape[0], side, side, input_shape[-1])


# Keras layer names (torch module paths with ``.`` as ``_``) per layout: the patch embedding, the token layer, and
# in each block the two norms, the attention and the MLP's two Linears
NAMES = {
    "torchvision": {"patches": "conv_proj", "tokens": "encoder_pos_embedding", "norm1": "ln_1",
                    "attention": "self_attention", "norm2": "ln_2", "fc1": "mlp_0", "fc2": "mlp_3"},
    TIMM: {"patches": "patch_embed_proj", "tokens": "pos_embed", "norm1": "norm1", "attention": "attn",
           "norm2": "norm2", "fc1": "mlp_fc1", "fc2": "mlp_fc2"},
}


def _block(x, prefix, spec: BackboneSpec):
    """Encoder block ``prefix`` (its torch path, ``.`` as ``_``): torchvision's EncoderBlock or timm's Block."""
    names = NAMES[spec.layout]
    out = layers.LayerNormalization(epsilon=EPSILON, name=f"{prefix}_{names['norm1']}")(x)
    out = SelfAttention(spec.heads, spec.layout, name=f"{prefix}_{names['attention']}")(out)
    x = layers.Add(name=f"{prefix}_add_1")([out, x])
    out = layers.LayerNormalization(epsilon=EPSILON, name=f"{prefix}_{names['norm2']}")(x)
    if spec.layout == TIMM:
        dense = {"kernel_initializer": initializers.RandomNormal(stddev=TIMM_STD), "bias_initializer": "zeros"}
    else:
        dense = {"kernel_initializer": initializers.VarianceScaling(1.0, "fan_avg", "uniform"),
                 "bias_initializer": initializers.RandomNormal(stddev=MLP_BIAS_STD)}
    out = layers.Dense(spec.mlp_dim, activation="gelu", name=f"{prefix}_{names['fc1']}", **dense)(out)
    out = layers.Dense(spec.features, name=f"{prefix}_{names['fc2']}", **dense)(out)
    return layers.Add(name=f"{prefix}_add_2")([out, x])


def _patch_embedding(spec: BackboneSpec, data_format: str) -> layers.Layer:
    """The patch x patch / patch conv: torchvision draws its kernel truncated normal (std sqrt(1 / fan_in)) with a
    zero bias, timm (``nn.Conv2d``'s own) both uniform in +-1/sqrt(fan_in)."""
    fan_in = 3 * spec.patch_size ** 2
    if spec.layout == TIMM:
        bound = 1.0 / math.sqrt(fan_in)
        init = {"kernel_initializer": initializers.RandomUniform(-bound, bound),
                "bias_initializer": initializers.RandomUniform(-bound, bound)}
    else:
        init = {"kernel_initializer": initializers.RandomNormal(stddev=math.sqrt(1.0 / fan_in))}
    return ChannelsLastConv2D(spec.features, spec.patch_size, strides=spec.patch_size, data_format=data_format,
                              name=NAMES[spec.layout]["patches"], **init)


def build_backbone(spec: BackboneSpec, input_shape=None, *, data_format: str | None = None,
                   name: str = "backbone") -> keras.Model:
    """The Vision Transformer of ``spec``: images -> the class token after ``encoder.ln`` (``spec.features``),
    or with ``spec.global_pool`` the mean of the patch tokens after the last block, through ``fc_norm``.

    ``input_shape``: (H, W, 3) for channels_last or (3, H, W) for channels_first, H and W multiples of the
    patch size (a fixed size is needed). Random weights with torchvision's (timm's) initialisation.
    """
    inputs, data_format = image_input(input_shape, data_format)
    x = _patch_embedding(spec, data_format)(inputs)
    if data_format == "channels_first":
        x = layers.Permute((2, 3, 1), name="conv_proj_permute")(x)
    timm = spec.layout == TIMM
    x = TokenEmbedding(grid(spec), TOKEN_KEYS[spec.layout], TIMM_CLS_STD if timm else 0.0,
                       name=NAMES[spec.layout]["tokens"])(x)
    for i in range(spec.blocks[0]):
        x = _block(x, keras_layer_name(block_prefix(spec, i)), spec)
    if spec.global_pool:
        x = PatchMean(name=POOL)(x)
        return keras.Model(inputs, layers.LayerNormalization(epsilon=EPSILON, name="fc_norm")(x), name=name)
    x = layers.LayerNormalization(epsilon=EPSILON, name="encoder_ln" if not timm else "norm")(x)
    return keras.Model(inputs, ClassToken(name=POOL)(x), name=name)
