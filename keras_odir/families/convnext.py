"""ConvNeXt backbones in Keras 3, layer for layer torchvision's ``convnext_*`` up to ``classifier.2`` (the
Linear it replaces by ``Identity``; the LayerNorm ``classifier.0`` before it stays in the backbone).

torchvision's network: a 4x4/4 conv stem and a LayerNorm over channels, stages of CNBlocks (depthwise
7x7 conv, LayerNorm, Linear to 4x the channels, exact (erf) GELU, Linear back, a learned per-channel
``layer_scale``, stochastic depth, plus the input) with a LayerNorm and a 2x2/2 conv between stages,
then global average pooling and ``classifier.0``. Every LayerNorm has epsilon 1e-6 and normalises over
channels. Layers are named after torchvision's modules with ``.`` replaced by ``_``
(``features.1.0.block.3`` -> ``features_1_0_block_3``); the GELU is the activation of the Linear before
it, and each block's ``layer_scale`` is a ``LayerScale`` layer named after the block (``features_1_0``).
torch computes the block's LayerNorm and Linears channels-last, between two permutes; with channels_first
data the Keras model permutes likewise around every LayerNorm and Linear.
"""

from __future__ import annotations

import keras
from keras import layers

import keras_odir.initializers as initializers
from keras_odir.layers import (
    ChannelsLastConv2D,
    ChannelsLastDepthwiseConv2D,
    LayerScale,
    StochasticDepth,
    image_input,
)
from keras_odir.parts import POOL
from odir_core.model.backbone import BackboneSpec
from odir_core.model.families.convnext import LAYER_SCALE, WEIGHT_STD

EPSILON = 1e-6
# torchvision's init for every Conv2d and Linear: trunc_normal_(std=0.02) truncated at +-2, i.e. 100 standard
# deviations: a plain normal (Keras' TruncatedNormal cuts at 2 standard deviations)
_INIT = initializers.RandomNormal(stddev=WEIGHT_STD)


def _channels_last(x, name, data_format):
    return layers.Permute((2, 3, 1), name=name)(x) if data_format == "channels_first" else x


def _channels_first(x, name, data_format):
    return layers.Permute((3, 1, 2), name=name)(x) if data_format == "channels_first" else x


def _layer_norm_2d(x, name, data_format):
    """torchvision's ``LayerNorm2d``: LayerNorm over the channels of each pixel."""
    x = _channels_last(x, f"{name}_permute", data_format)
    x = layers.LayerNormalization(epsilon=EPSILON, name=name)(x)
    return _channels_first(x, f"{name}_unpermute", data_format)


def _conv(x, filters, kernel, name, data_format):
    """A k x k / k conv with bias (the stem's and the downsampling's; no padding)."""
    return ChannelsLastConv2D(filters, kernel, strides=kernel, name=name, data_format=data_format,
                              kernel_initializer=_INIT)(x)


def _block(x, prefix, channels, drop_rate, data_format):
    """torchvision's CNBlock ``prefix`` (``.`` as ``_``)."""
    out = ChannelsLastDepthwiseConv2D(7, padding="same", data_format=data_format, depthwise_initializer=_INIT,
                                      name=f"{prefix}_block_0")(x)
    out = _channels_last(out, f"{prefix}_block_1", data_format)
    out = layers.LayerNormalization(epsilon=EPSILON, name=f"{prefix}_block_2")(out)
    out = layers.Dense(4 * channels, activation="gelu", kernel_initializer=_INIT, name=f"{prefix}_block_3")(out)
    out = layers.Dense(channels, kernel_initializer=_INIT, name=f"{prefix}_block_5")(out)
    out = _channels_first(out, f"{prefix}_block_6", data_format)
    out = LayerScale(LAYER_SCALE, axis=1 if data_format == "channels_first" else -1, name=prefix)(out)
    out = StochasticDepth(drop_rate, name=f"{prefix}_stochastic_depth")(out)
    return layers.Add(name=f"{prefix}_add")([out, x])


def build_backbone(spec: BackboneSpec, input_shape=None, *, data_format: str | None = None,
                   name: str = "backbone") -> keras.Model:
    """The ConvNeXt of ``spec`` (blocks and widths per stage from the registry): images -> pooled features.

    ``input_shape``: (H, W, 3) for channels_last (default (None, None, 3)) or (3, H, W) for
    channels_first. Random weights with torchvision's initialisation.
    """
    inputs, data_format = image_input(input_shape, data_format)
    x = _conv(inputs, spec.widths[0], 4, "features_0_0", data_format)
    x = _layer_norm_2d(x, "features_0_1", data_format)
    total, index = sum(spec.blocks), 0
    for stage, (count, channels) in enumerate(zip(spec.blocks, spec.widths)):
        for i in range(count):
            # torchvision: the i-th of n blocks drops with stochastic_depth * i / (n - 1)
            drop_rate = spec.stochastic_depth * index / (total - 1.0)
            x = _block(x, f"features_{2 * stage + 1}_{i}", channels, drop_rate, data_format)
            index += 1
        if stage < len(spec.blocks) - 1:
            x = _layer_norm_2d(x, f"features_{2 * stage + 2}_0", data_format)
            x = _conv(x, spec.widths[stage + 1], 2, f"features_{2 * stage + 2}_1", data_format)
    x = layers.GlobalAveragePooling2D(data_format=data_format, name=POOL)(x)
    x = layers.LayerNormalization(epsilon=EPSILON, name="classifier_0")(x)
    return keras.Model(inputs, x, name=name)
