"""DenseNet backbones in Keras 3, layer for layer torchvision's ``densenet*`` without ``classifier``.

torchvision's DenseNet-BC: a stem (7x7/2 conv, BatchNorm, ReLU, 3x3/2 max-pool), dense blocks
whose every layer (BatchNorm, ReLU, 1x1 conv to ``bn_size * growth_rate``, BatchNorm, ReLU, 3x3
conv to ``growth_rate``) sees the concatenation of the block's input and all earlier layers'
outputs, transitions between blocks (BatchNorm, ReLU, 1x1 conv halving the channels, 2x2/2
average pool), a final BatchNorm, and then, in its ``forward``, a ReLU and the global average pool.
Layers are named after torchvision's modules with ``.`` replaced by ``_``
(``features.denseblock2.denselayer3.conv1`` -> ``features_denseblock2_denselayer3_conv1``), so
``keras_odir.weights`` maps weights by name; each BatchNorm+ReLU pair is one
``TorchBatchNormalization(activation="relu")``. ``drop_rate`` is torchvision's default 0 (no dropout).
"""

from __future__ import annotations

import keras
from keras import layers

import keras_odir.initializers as initializers
from keras_odir.layers import (
    ChannelsLastAveragePooling2D,
    ChannelsLastConv2D,
    ChannelsLastMaxPooling2D,
    ChannelsLastZeroPadding2D,
    TorchBatchNormalization,
    TorchConcatenate,
    image_input,
)
from keras_odir.parts import POOL
from odir_core.model.backbone import BackboneSpec

GROWTH_RATE = 32
BN_SIZE = 4
INIT_FEATURES = 64


def _conv(filters, kernel, stride, name, data_format, padding="valid"):
    # torchvision's DenseNet init: kaiming_normal_ with its defaults (fan_in, gain sqrt(2))
    return ChannelsLastConv2D(filters, kernel, strides=stride, padding=padding, use_bias=False, name=name,
                              data_format=data_format,
                              kernel_initializer=initializers.VarianceScaling(2.0, "fan_in", "untruncated_normal"))


def _bn_relu(name, data_format):
    axis = 1 if data_format == "channels_first" else -1
    return TorchBatchNormalization(axis=axis, momentum=0.9, epsilon=1e-5, name=name, activation="relu")


def _dense_layer(features, prefix, data_format):
    """One ``_DenseLayer``: the concatenated ``features`` -> ``GROWTH_RATE`` new channels."""
    axis = 1 if data_format == "channels_first" else -1
    x = features[0] if len(features) == 1 else TorchConcatenate(axis=axis, name=f"{prefix}_cat")(features)
    x = _bn_relu(f"{prefix}_norm1", data_format)(x)
    x = _conv(BN_SIZE * GROWTH_RATE, 1, 1, f"{prefix}_conv1", data_format)(x)
    x = _bn_relu(f"{prefix}_norm2", data_format)(x)
    return _conv(GROWTH_RATE, 3, 1, f"{prefix}_conv2", data_format, padding="same")(x)


def build_backbone(spec: BackboneSpec, input_shape=None, *, data_format: str | None = None,
                   name: str = "backbone") -> keras.Model:
    """The DenseNet of ``spec`` (layers per dense block from the registry): images -> pooled features.

    ``input_shape``: (H, W, 3) for channels_last (default (None, None, 3)) or (3, H, W) for
    channels_first. Random weights with torchvision's initialisation.
    """
    inputs, data_format = image_input(input_shape, data_format)
    axis = 1 if data_format == "channels_first" else -1
    x = ChannelsLastZeroPadding2D(3, data_format=data_format, name="features_pad0")(inputs)
    x = _conv(INIT_FEATURES, 7, 2, "features_conv0", data_format)(x)
    x = _bn_relu("features_norm0", data_format)(x)
    x = ChannelsLastZeroPadding2D(1, data_format=data_format, name="features_padpool0")(x)
    # zero padding is exact here: the input follows a ReLU (>= 0) and every window holds a real pixel
    x = ChannelsLastMaxPooling2D(3, strides=2, data_format=data_format, name="features_pool0")(x)
    channels = INIT_FEATURES
    for block, count in enumerate(spec.blocks, start=1):
        features = [x]
        for i in range(1, count + 1):
            features.append(_dense_layer(features, f"features_denseblock{block}_denselayer{i}", data_format))
        x = TorchConcatenate(axis=axis, name=f"features_denseblock{block}_cat")(features)
        channels += count * GROWTH_RATE
        if block < len(spec.blocks):
            prefix = f"features_transition{block}"
            x = _bn_relu(f"{prefix}_norm", data_format)(x)
            channels //= 2
            x = _conv(channels, 1, 1, f"{prefix}_conv", data_format)(x)
            x = ChannelsLastAveragePooling2D(2, strides=2, data_format=data_format, name=f"{prefix}_pool")(x)
    x = _bn_relu("features_norm5", data_format)(x)  # torchvision: features.norm5, then F.relu in forward
    x = layers.GlobalAveragePooling2D(data_format=data_format, name=POOL)(x)
    return keras.Model(inputs, x, name=name)
