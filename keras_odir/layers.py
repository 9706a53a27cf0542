"""Layers shared by the Keras backbones.

On the torch backend, with channels_last data, both layers run one torch kernel without Keras'
layout copies (``keras_odir.torch_kernels``); every other backend runs Keras' own ops.
"""

from __future__ import annotations

import math

import keras
from keras import layers, ops

TORCH = keras.backend.backend() == "torch"
if TORCH:
    import keras_odir.torch_kernels as torch_kernels


@keras.saving.register_keras_serializable(package="keras_odir")
class ChannelsLastConv2D(layers.Conv2D):
    """Keras' Conv2D (kernel HWIO, saved and converted as usual) with a copy-free torch path.

    Torch backend, channels_last, no groups or dilation, ``valid`` or stride-1 ``same`` padding:
    ``torch_kernels.conv2d_nhwc`` (the input as a channels_last view, the kernel transposed once per
    weight version while no gradient is needed). Otherwise Keras' conv.
    """

    def convolution_op(self, inputs, kernel):
        height, width = self.kernel_size
        fast = (TORCH and self.data_format == "channels_last" and self.groups == 1
                and tuple(self.dilation_rate) == (1, 1)
                and (self.padding == "valid" or (tuple(self.strides) == (1, 1) and height == width and height % 2)))
        if not fast:
            return super().convolution_op(inputs, kernel)
        padding = 0 if self.padding == "valid" else height // 2
        return torch_kernels.conv2d_nhwc(ops.convert_to_tensor(inputs), ops.convert_to_tensor(kernel),
                                         self.strides, padding)


@keras.saving.register_keras_serializable(package="keras_odir")
class TorchBatchNormalization(layers.BatchNormalization):
    """BatchNormalization computing training-mode statistics as torch does.

    Two differences from Keras' own layer, both in training mode only: the batch variance is
    computed in two passes, mean((x - mean)^2), where Keras uses E[x^2] - E[x]^2, which loses
    precision to cancellation on small batches; and the moving variance is updated with the
    unbiased variance (times n / (n - 1), n = values per channel), as torch's running_var is.
    Statistics are computed in float32 (float64 for float64 inputs).
    On the torch backend it is torch's own fused batch_norm, with the same semantics.
    ``activation="relu"``: a ReLU follows, in the same layer (on torch, in place on the fresh output).
    """

    def __init__(self, *args, activation: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if activation not in (None, "relu"):
            raise ValueError(f"activation must be None or 'relu', not {activation!r}")
        self.activation = activation

    def get_config(self):
        return {**super().get_config(), "activation": self.activation}

    def call(self, inputs, training=None, mask=None):
        if TORCH and mask is None and self.scale and self.center:
            return torch_kernels.batch_norm(
                ops.convert_to_tensor(inputs), self.axis, self.moving_mean.value, self.moving_variance.value,
                ops.convert_to_tensor(self.gamma), ops.convert_to_tensor(self.beta),
                training=bool(training and self.trainable), momentum=self.momentum, epsilon=self.epsilon,
                relu=self.activation == "relu")
        outputs = self._normalize(inputs, training, mask)
        return ops.relu(outputs) if self.activation == "relu" else outputs

    def _normalize(self, inputs, training, mask):
        if not (training and self.trainable) or mask is not None or self.renorm or self.synchronized:
            return super().call(inputs, training=training, mask=mask)
        x = ops.cast(inputs, _statistics_dtype(inputs.dtype))
        axes = self._reduction_axes
        n = _count(x, axes)
        mean = _mean(x, axes, n)
        centered = x - mean
        variance = _mean(ops.square(centered), axes, n)
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


def _statistics_dtype(dtype) -> str:
    """float32 for float16/bfloat16/float32 inputs, float64 for float64 (Keras' ``result_type`` gives
    float32 there on the torch and jax backends)."""
    dtype = keras.backend.standardize_dtype(dtype)
    return dtype if dtype == "float64" else keras.backend.result_type(dtype, "float32")


def _mean(x, axes, n):
    """Mean over ``axes`` (kept) of ``x`` holding ``n`` values per channel. ``ops.mean``, except for float64
    ``x``: sum / n there, since ``ops.mean`` computes float64 means in float32 on the torch and jax backends."""
    if keras.backend.standardize_dtype(x.dtype) != "float64":
        return ops.mean(x, axis=axes, keepdims=True)
    return ops.divide(ops.sum(x, axis=axes, keepdims=True), n if isinstance(n, int) else ops.cast(n, x.dtype))


def _bessel(n, dtype):
    n = ops.cast(n, dtype)
    return n / ops.maximum(n - 1.0, 1.0)


@keras.saving.register_keras_serializable(package="keras_odir")
class ResidualReLU(layers.Layer):
    """relu(x + shortcut), the join of a residual block (on torch, the ReLU in place on the fresh sum)."""

    def call(self, inputs):
        x, shortcut = inputs
        if TORCH:
            return torch_kernels.add_relu(ops.convert_to_tensor(x), ops.convert_to_tensor(shortcut))
        return ops.relu(ops.add(x, shortcut))

    def compute_output_shape(self, input_shape):
        return input_shape[0]
