"""ResNet50 v1.5 in Keras 3, layer for layer torchvision's ``resnet50`` without ``fc``.

Every layer holding weights is named after its torchvision module with ``.`` replaced by
``_`` (``layer3.4.conv2`` -> ``layer3_4_conv2``; the torch backend forbids ``.`` in names),
so ``keras_odir.convert`` maps weights by name. Stride-2 convolutions and the max-pool use
an explicit symmetric ``ZeroPadding2D`` + ``valid`` (Keras ``same`` pads asymmetrically for
stride 2); stride-1 3x3 convolutions use ``same``, which is torch's padding=1 exactly.
The max-pool pads with zeros where torch pads with -inf: its input follows a ReLU (>= 0)
and every 3x3/2 window holds at least one real pixel, so the result is identical.
"""

from __future__ import annotations

import math
import os

import keras
from keras import layers, ops

FEATURES = 2048
BLOCKS = (("layer1", 64, 3, 1), ("layer2", 128, 4, 2), ("layer3", 256, 6, 2), ("layer4", 512, 3, 2))
EXPANSION = 4


@keras.saving.register_keras_serializable(package="keras_odir")
class TorchBatchNormalization(layers.BatchNormalization):
    """BatchNormalization computing training-mode statistics as torch does.

    Two differences from Keras' own layer, both in training mode only: the batch variance is
    computed in two passes, mean((x - mean)^2), where Keras uses E[x^2] - E[x]^2, which loses
    precision to cancellation on small batches; and the moving variance is updated with the
    unbiased variance (times n / (n - 1), n = values per channel), as torch's running_var is.
    """

    def call(self, inputs, training=None, mask=None):
        if not (training and self.trainable) or mask is not None or self.renorm or self.synchronized:
            return super().call(inputs, training=training, mask=mask)
        x = ops.cast(inputs, keras.backend.result_type(inputs.dtype, "float32"))
        axes = self._reduction_axes
        mean = ops.mean(x, axis=axes, keepdims=True)
        centered = x - mean
        variance = ops.mean(ops.square(centered), axis=axes, keepdims=True)
        n = _count(x, axes)
        bessel = n / max(n - 1, 1) if isinstance(n, int) else _bessel(n, x.dtype)
        self.moving_mean.assign(ops.cast(self.moving_mean, x.dtype) * self.momentum
                                + ops.reshape(mean, (-1,)) * (1.0 - self.momentum))
        self.moving_variance.assign(ops.cast(self.moving_variance, x.dtype) * self.momentum
                                    + ops.reshape(variance, (-1,)) * (bessel * (1.0 - self.momentum)))
        scale = ops.rsqrt(variance + self.epsilon)
        if self.scale:
            scale = scale * ops.reshape(ops.cast(self.gamma, x.dtype), ops.shape(scale))
        outputs = centered * scale
        if self.center:
            outputs = outputs + ops.reshape(ops.cast(self.beta, x.dtype), ops.shape(scale))
        return ops.cast(outputs, self.compute_dtype)


def _count(x, axes):
    """Values per channel: a Python int when the shape is static, a tensor otherwise."""
    dims = [x.shape[a] for a in axes]
    if all(isinstance(d, int) for d in dims):
        return math.prod(dims)
    shape = ops.shape(x)
    return math.prod(shape[a] for a in axes)


def _bessel(n, dtype):
    n = ops.cast(n, dtype)
    return n / ops.maximum(n - 1.0, 1.0)


def _conv(filters, kernel, stride, name, data_format, padding="valid"):
    # torchvision's init: kaiming_normal_(mode="fan_out", nonlinearity="relu")
    return layers.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=False, name=name,
                         data_format=data_format,
                         kernel_initializer=keras.initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal"))


def _bn(name, data_format):
    axis = 1 if data_format == "channels_first" else -1
    return TorchBatchNormalization(axis=axis, momentum=0.9, epsilon=1e-5, name=name)


def _bottleneck(x, prefix, width, stride, downsample, data_format):
    """torchvision's Bottleneck: 1x1 -> 3x3 (stride here, v1.5) -> 1x1 x4, plus identity or downsample."""
    identity = x
    out = _conv(width, 1, 1, f"{prefix}_conv1", data_format)(x)
    out = _bn(f"{prefix}_bn1", data_format)(out)
    out = layers.ReLU(name=f"{prefix}_relu1")(out)
    if stride == 1:
        out = _conv(width, 3, 1, f"{prefix}_conv2", data_format, padding="same")(out)
    else:
        out = layers.ZeroPadding2D(1, data_format=data_format, name=f"{prefix}_pad2")(out)
        out = _conv(width, 3, stride, f"{prefix}_conv2", data_format)(out)
    out = _bn(f"{prefix}_bn2", data_format)(out)
    out = layers.ReLU(name=f"{prefix}_relu2")(out)
    out = _conv(width * EXPANSION, 1, 1, f"{prefix}_conv3", data_format)(out)
    out = _bn(f"{prefix}_bn3", data_format)(out)
    if downsample:
        identity = _conv(width * EXPANSION, 1, stride, f"{prefix}_downsample_0", data_format)(x)
        identity = _bn(f"{prefix}_downsample_1", data_format)(identity)
    out = layers.Add(name=f"{prefix}_add")([out, identity])
    return layers.ReLU(name=f"{prefix}_relu3")(out)


def build_resnet50(input_shape=None, *, data_format: str | None = None, name: str = "resnet50",
                   weights: str | os.PathLike | None = None) -> keras.Model:
    """ResNet50 v1.5 backbone: images (ImageNet-normalised float32) -> 2048 pooled features.

    ``input_shape``: (H, W, 3) for channels_last (default (None, None, 3)) or (3, H, W) for
    channels_first. ``weights``: None (random, torchvision's initialisation), ``"imagenet"``
    (torchvision's checkpoint from the torch hub folder) or a checkpoint path.
    """
    data_format = data_format or keras.config.image_data_format()
    if data_format not in ("channels_last", "channels_first"):
        raise ValueError(f"data_format must be 'channels_last' or 'channels_first', not {data_format!r}.")
    if input_shape is None:
        input_shape = (None, None, 3) if data_format == "channels_last" else (3, None, None)
    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = layers.ZeroPadding2D(3, data_format=data_format, name="conv1_pad")(inputs)
    x = _conv(64, 7, 2, "conv1", data_format)(x)
    x = _bn("bn1", data_format)(x)
    x = layers.ReLU(name="relu")(x)
    x = layers.ZeroPadding2D(1, data_format=data_format, name="maxpool_pad")(x)
    x = layers.MaxPooling2D(3, strides=2, data_format=data_format, name="maxpool")(x)
    for layer_name, width, blocks, stride in BLOCKS:
        for block in range(blocks):
            x = _bottleneck(x, f"{layer_name}_{block}", width, stride if block == 0 else 1,
                            downsample=block == 0, data_format=data_format)
    x = layers.GlobalAveragePooling2D(data_format=data_format, name="avgpool")(x)
    model = keras.Model(inputs, x, name=name)
    if weights is not None:
        from keras_odir.convert import load_imagenet_weights

        load_imagenet_weights(model, None if weights == "imagenet" else weights)
    return model
