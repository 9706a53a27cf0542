"""EfficientNet (V1) backbones in Keras 3, layer for layer torchvision's ``efficientnet_b*`` up to
``classifier.1`` (the Linear it replaces by ``Identity``).

torchvision's network: a 3x3/2 conv stem, MBConv blocks (``odir_core.model.families.efficientnet.mbconv_blocks``:
1x1 expansion, depthwise conv, squeeze-excitation, 1x1 projection, plus the input through stochastic
depth when the shape is kept), a 1x1 conv to four times the last block's width, global average pooling
and ``classifier.0``, the dropout before the replaced Linear. Convolutions are followed by BatchNorm
(torch's defaults, epsilon 1e-5, momentum 0.1) and SiLU, except the projection (no activation); each
BatchNorm + SiLU pair is one ``TorchBatchNormalization(activation="silu")``, each squeeze-excitation one
``SqueezeExcitation`` layer. Layers are named after torchvision's modules with ``.`` replaced by ``_``
(``features.2.0.block.1.0`` -> ``features_2_0_block_1_0``), so ``keras_odir.weights`` maps weights by
name. torch pads every
convolution by (k - 1) // 2 on each side: ``same`` for stride 1, an explicit symmetric
``ZeroPadding2D`` + ``valid`` for stride 2 (Keras ``same`` pads asymmetrically there).
"""

from __future__ import annotations

import keras
from keras import layers

import keras_odir.initializers as initializers
from keras_odir.layers import (
    ChannelsLastConv2D,
    ChannelsLastDepthwiseConv2D,
    ChannelsLastZeroPadding2D,
    FreezableDropout,
    SqueezeExcitation,
    StochasticDepth,
    TorchBatchNormalization,
    image_input,
)
from keras_odir.parts import POOL
from odir_core.model.backbone import BackboneSpec
from odir_core.model.families.efficientnet import MBConv, mbconv_blocks

# torchvision's init: kaiming_normal_(mode="fan_out") for every conv. A depthwise kernel is (C, 1, k, k) in
# torch, fan_out C*k*k; Keras' (k, k, C, 1) has that as its fan_in.
_CONV_INIT = initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")
_DEPTHWISE_INIT = initializers.VarianceScaling(2.0, "fan_in", "untruncated_normal")


def _conv_bn(x, filters, name, data_format, *, silu=True):
    """torchvision's 1x1 ``Conv2dNormActivation`` ``name``: conv ``name.0``, BatchNorm ``name.1``, SiLU."""
    x = ChannelsLastConv2D(filters, 1, use_bias=False, name=f"{name}_0", data_format=data_format,
                           kernel_initializer=_CONV_INIT)(x)
    return _bn(x, name, data_format, silu)


def _bn(x, name, data_format, silu=True):
    axis = 1 if data_format == "channels_first" else -1
    return TorchBatchNormalization(axis=axis, momentum=0.9, epsilon=1e-5, activation="silu" if silu else None,
                                   name=f"{name}_1")(x)


def _pad(x, kernel, stride, name, data_format):
    """torch's symmetric (k - 1) // 2 padding, explicit before a stride-2 conv; the conv's padding mode."""
    if stride == 1:
        return x, "same"
    return ChannelsLastZeroPadding2D((kernel - 1) // 2, data_format=data_format, name=name)(x), "valid"


def _mbconv(x, block: MBConv, data_format):
    """torchvision's MBConv ``features.<stage>.<index>``."""
    module = f"features_{block.stage}_{block.index}"
    prefix = f"{module}_block"
    out, i = x, 0
    if block.expanded != block.in_channels:
        out = _conv_bn(out, block.expanded, f"{prefix}_0", data_format)
        i = 1
    out, padding = _pad(out, block.kernel, block.stride, f"{prefix}_{i}_pad", data_format)
    out = ChannelsLastDepthwiseConv2D(block.kernel, strides=block.stride, padding=padding, use_bias=False,
                                      data_format=data_format, depthwise_initializer=_DEPTHWISE_INIT,
                                      name=f"{prefix}_{i}_0")(out)
    out = _bn(out, f"{prefix}_{i}", data_format)
    out = SqueezeExcitation(block.squeeze, data_format=data_format, name=f"{prefix}_{i + 1}")(out)
    out = _conv_bn(out, block.out_channels, f"{prefix}_{i + 2}", data_format, silu=False)
    if not block.residual:
        return out
    out = StochasticDepth(block.drop_rate, name=f"{module}_stochastic_depth")(out)
    return layers.Add(name=f"{module}_add")([out, x])


def build_backbone(spec: BackboneSpec, input_shape=None, *, data_format: str | None = None,
                   name: str = "backbone") -> keras.Model:
    """The EfficientNet of ``spec`` (width and depth scaling from the registry): images -> pooled features.

    ``input_shape``: (H, W, 3) for channels_last (default (None, None, 3)) or (3, H, W) for
    channels_first. Random weights with torchvision's initialisation.
    """
    inputs, data_format = image_input(input_shape, data_format)
    blocks = mbconv_blocks(spec)
    x = ChannelsLastZeroPadding2D(1, data_format=data_format, name="features_0_pad")(inputs)
    x = ChannelsLastConv2D(blocks[0].in_channels, 3, strides=2, use_bias=False, name="features_0_0",
                           data_format=data_format, kernel_initializer=_CONV_INIT)(x)
    x = _bn(x, "features_0", data_format)
    for block in blocks:
        x = _mbconv(x, block, data_format)
    x = _conv_bn(x, spec.features, f"features_{blocks[-1].stage + 1}", data_format)
    x = layers.GlobalAveragePooling2D(data_format=data_format, name=POOL)(x)
    x = FreezableDropout(spec.dropout, name="classifier_0")(x)
    return keras.Model(inputs, x, name=name)
