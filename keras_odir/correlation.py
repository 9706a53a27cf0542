"""The cross-eye spatial correlation of the ``scm`` head (``odir_core.model.model_spec.CrossEyeCorrelation``)."""

from __future__ import annotations

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="keras_odir")
class CorrelationFusion(layers.Layer):
    """Both eyes' feature maps, concatenated on channels (B, H, W, 2C), -> [left, right] features (B, 2C).

    For every position of each eye's map, a softmax over its scaled dot products with all positions of the
    other eye's map aggregates that map; each map plus its aggregate is average-pooled (equations:
    ``odir_core.model.model_spec.CrossEyeCorrelation``). Computes in the dtype policy's variable dtype (float32
    under mixed precision), as softmax wants.
    """

    def call(self, maps):
        maps = ops.cast(maps, self.variable_dtype)
        left, right = ops.split(maps, 2, axis=-1)
        channels = left.shape[-1]
        left = ops.reshape(left, (ops.shape(left)[0], -1, channels))  # (B, N, C)
        right = ops.reshape(right, (ops.shape(right)[0], -1, channels))
        scores = ops.matmul(left, ops.transpose(right, (0, 2, 1))) * (channels ** -0.5)  # (B, N, M)
        left_agg = ops.matmul(_softmax(scores), right)
        right_agg = ops.matmul(_softmax(ops.transpose(scores, (0, 2, 1))), left)
        return ops.concatenate([ops.mean(left + left_agg, axis=1), ops.mean(right + right_agg, axis=1)], axis=-1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])


def _softmax(x):
    # ops.softmax, written out: Keras warns on every call when the axis has size 1 (a 1x1 map at small sizes);
    # amax, as ops.max on torch checks its result's type in a way torch.compile cannot trace
    e = ops.exp(x - ops.amax(x, axis=-1, keepdims=True))
    return e / ops.sum(e, axis=-1, keepdims=True)
