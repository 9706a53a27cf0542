"""Layers shared by the Keras backbones."""

from __future__ import annotations

import math

import keras
from keras import layers, ops


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
