"""ResNet v1.5 backbones in Keras 3, layer for layer torchvision's ``resnet*`` without ``fc``:
basic blocks (ResNet-18/34) and bottlenecks (ResNet-50/101).

Every layer holding weights is named after its torchvision module with ``.`` replaced by
``_`` (``layer3.4.conv2`` -> ``layer3_4_conv2``; the torch backend forbids ``.`` in names),
so ``keras_odir.weights`` maps weights by name. Stride-2 convolutions and the max-pool use
an explicit symmetric ``ZeroPadding2D`` + ``valid`` (Keras ``same`` pads asymmetrically for
stride 2); stride-1 3x3 convolutions use ``same``, which is torch's padding=1 exactly.
The max-pool pads with zeros where torch pads with -inf: its input follows a ReLU (>= 0)
and every 3x3/2 window holds at least one real pixel, so the result is identical.
Each torchvision BatchNorm that a ReLU follows is one ``TorchBatchNormalization(activation="relu")``,
and a block's ``out += identity; relu(out)`` is one ``ResidualReLU`` (named ``<block>_relu3``,
``<block>_relu2`` in a basic block):
fewer Keras layer calls and, on torch, fewer new tensors.
"""

from __future__ import annotations

import keras
from keras import layers

import keras_odir.initializers as initializers
from keras_odir.layers import (
    ChannelsLastConv2D,
    ChannelsLastMaxPooling2D,
    ChannelsLastZeroPadding2D,
    ResidualReLU,
    TorchBatchNormalization,
    image_input,
)
from keras_odir.parts import POOL
from odir_core.model.backbone import BackboneSpec

WIDTHS = (64, 128, 256, 512)  # bottleneck width of layer1..layer4
EXPANSION = 4


def _conv(filters, kernel, stride, name, data_format, padding="valid"):
    # torchvision's init: kaiming_normal_(mode="fan_out", nonlinearity="relu")
    return ChannelsLastConv2D(filters, kernel, strides=stride, padding=padding, use_bias=False, name=name,
                              data_format=data_format,
                         kernel_initializer=initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal"))


def _bn(name, data_format, relu=False):
    axis = 1 if data_format == "channels_first" else -1
    return TorchBatchNormalization(axis=axis, momentum=0.9, epsilon=1e-5, name=name,
                                   activation="relu" if relu else None)


def _bottleneck(x, prefix, width, stride, downsample, data_format):
    """torchvision's Bottleneck: 1x1 -> 3x3 (stride here, v1.5) -> 1x1 x4, plus identity or downsample."""
    identity = x
    out = _conv(width, 1, 1, f"{prefix}_conv1", data_format)(x)
    out = _bn(f"{prefix}_bn1", data_format, relu=True)(out)
    if stride == 1:
        out = _conv(width, 3, 1, f"{prefix}_conv2", data_format, padding="same")(out)
    else:
        out = ChannelsLastZeroPadding2D(1, data_format=data_format, name=f"{prefix}_pad2")(out)
        out = _conv(width, 3, stride, f"{prefix}_conv2", data_format)(out)
    out = _bn(f"{prefix}_bn2", data_format, relu=True)(out)
    out = _conv(width * EXPANSION, 1, 1, f"{prefix}_conv3", data_format)(out)
    out = _bn(f"{prefix}_bn3", data_format)(out)
    if downsample:
        identity = _conv(width * EXPANSION, 1, stride, f"{prefix}_downsample_0", data_format)(x)
        identity = _bn(f"{prefix}_downsample_1", data_format)(identity)
    return ResidualReLU(name=f"{prefix}_relu3")([out, identity])


def _basic_block(x, prefix, width, stride, downsample, data_format):
    """torchvision's BasicBlock (ResNet-18/34): 3x3 (stride here) -> 3x3, plus identity or downsample."""
    identity = x
    if stride == 1:
        out = _conv(width, 3, 1, f"{prefix}_conv1", data_format, padding="same")(x)
    else:
        out = ChannelsLastZeroPadding2D(1, data_format=data_format, name=f"{prefix}_pad1")(x)
        out = _conv(width, 3, stride, f"{prefix}_conv1", data_format)(out)
    out = _bn(f"{prefix}_bn1", data_format, relu=True)(out)
    out = _conv(width, 3, 1, f"{prefix}_conv2", data_format, padding="same")(out)
    out = _bn(f"{prefix}_bn2", data_format)(out)
    if downsample:
        identity = _conv(width, 1, stride, f"{prefix}_downsample_0", data_format)(x)
        identity = _bn(f"{prefix}_downsample_1", data_format)(identity)
    return ResidualReLU(name=f"{prefix}_relu2")([out, identity])


def build_backbone(spec: BackboneSpec, input_shape=None, *, data_format: str | None = None,
                   name: str = "backbone") -> keras.Model:
    """The ResNet of ``spec`` (blocks per stage from the registry): images -> ``spec.features`` pooled features.

    ``input_shape``: (H, W, 3) for channels_last (default (None, None, 3)) or (3, H, W) for
    channels_first. Random weights with torchvision's initialisation.
    """
    inputs, data_format = image_input(input_shape, data_format)
    x = ChannelsLastZeroPadding2D(3, data_format=data_format, name="conv1_pad")(inputs)
    x = _conv(64, 7, 2, "conv1", data_format)(x)
    x = _bn("bn1", data_format, relu=True)(x)
    x = ChannelsLastZeroPadding2D(1, data_format=data_format, name="maxpool_pad")(x)
    x = ChannelsLastMaxPooling2D(3, strides=2, data_format=data_format, name="maxpool")(x)
    make_block = _bottleneck if spec.bottleneck else _basic_block
    for stage, (width, blocks) in enumerate(zip(WIDTHS, spec.blocks), start=1):
        for block in range(blocks):
            stride = 2 if stage > 1 and block == 0 else 1
            # the first block projects the identity when the shape changes: every stage of a bottleneck
            # ResNet (64 -> 256 channels in layer1), stages 2-4 of a basic one
            downsample = block == 0 and (stage > 1 or spec.bottleneck)
            x = make_block(x, f"layer{stage}_{block}", width, stride, downsample=downsample, data_format=data_format)
    x = layers.GlobalAveragePooling2D(data_format=data_format, name=POOL)(x)
    return keras.Model(inputs, x, name=name)
