"""The ML-Decoder head (``odir_core.model.model_spec.MLDecoder``) as one Keras layer, written with keras.ops.

Its variables are kept in torch's layout (dense weights (out, in), the attention's packed ``in_proj_weight``),
so they map one to one to torch_odir's state keys (``torch_variables``; names: ``MLDecoder.state_names``).
"""

from __future__ import annotations

import math

import keras
from keras import layers, ops

import keras_odir.initializers as initializers
from keras_odir.correlation import _softmax
from odir_core.model.model_spec import MLDecoder as MLDecoderSpec

_EPSILON = 1e-5  # torch's LayerNorm


@keras.saving.register_keras_serializable(package="keras_odir")
class MLDecoder(layers.Layer):
    """Both eyes' feature maps, concatenated on channels (B, H, W, 2C), -> ``units`` logits (B, units).

    The maps become tokens (left then right), ``relu(Linear(C, dim))`` plus each eye's embedding; the learned
    queries cross-attend them in one decoder layer without self-attention, and a group fully connected layer
    gives the logits (equations: ``odir_core.model.model_spec.MLDecoder``). Dropout (``rate``) on the
    attention weights, after the attention, inside and after the feed-forward, in training only. Computes in
    the dtype policy's variable dtype (float32 under mixed precision), as softmax and LayerNorm want.
    """

    def __init__(self, units: int = 8, queries: int = 8, dim: int = 256, heads: int = 8, ff: int = 1024,
                 rate: float = 0.1, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.spec = MLDecoderSpec(units, queries, dim, heads, ff, rate)
        self.rate = rate
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    @classmethod
    def from_spec(cls, spec: MLDecoderSpec, **kwargs) -> MLDecoder:
        return cls(spec.units, spec.queries, spec.dim, spec.heads, spec.ff, spec.dropout, **kwargs)

    def build(self, input_shape):
        spec, channels = self.spec, input_shape[-1] // 2
        d, k = spec.dim, spec.queries

        def uniform(fan_in):  # torch.nn.Linear's init
            bound = 1.0 / math.sqrt(fan_in)
            return initializers.RandomUniform(-bound, bound)

        def weight(name, shape, initializer):
            return self.add_weight(shape=shape, name=name, initializer=initializer)

        self.embed_weight = weight("embed_weight", (d, channels), uniform(channels))
        self.embed_bias = weight("embed_bias", (d,), uniform(channels))
        self.eye_embed = weight("eye_embed", (2, d), initializers.RandomNormal(stddev=0.02))
        self.query_embed = weight("query_embed", (k, d), initializers.RandomNormal(stddev=1.0))
        # nn.MultiheadAttention's init: xavier_uniform_ on the packed projections, zero biases
        glorot = initializers.VarianceScaling(1.0, "fan_avg", "uniform")
        self.in_proj_weight = weight("in_proj_weight", (3 * d, d), glorot)
        self.in_proj_bias = weight("in_proj_bias", (3 * d,), "zeros")
        self.out_proj_weight = weight("out_proj_weight", (d, d), uniform(d))
        self.out_proj_bias = weight("out_proj_bias", (d,), "zeros")
        self.norm1_gamma, self.norm1_beta = weight("norm1_gamma", (d,), "ones"), weight("norm1_beta", (d,), "zeros")
        self.ff1_weight = weight("ff1_weight", (spec.ff, d), uniform(d))
        self.ff1_bias = weight("ff1_bias", (spec.ff,), uniform(d))
        self.ff2_weight = weight("ff2_weight", (d, spec.ff), uniform(spec.ff))
        self.ff2_bias = weight("ff2_bias", (d,), uniform(spec.ff))
        self.norm2_gamma, self.norm2_beta = weight("norm2_gamma", (d,), "ones"), weight("norm2_beta", (d,), "zeros")
        # torch's xavier_normal_ on (K, dim, group): fan_in dim * group, fan_out K * group
        std = math.sqrt(2.0 / (spec.group * (d + k)))
        self.group_weight = weight("group_weight", (k, d, spec.group), initializers.RandomNormal(stddev=std))
        self.group_bias = weight("group_bias", (spec.units,), "zeros")

    def _dropout(self, x, training):
        if training and self.rate > 0:
            return keras.random.dropout(x, self.rate, seed=self.seed_generator)
        return x

    def call(self, maps, training=None):
        spec = self.spec
        maps = ops.cast(maps, self.variable_dtype)
        batch = ops.shape(maps)[0]
        eyes = ops.split(maps, 2, axis=-1)
        tokens = ops.concatenate(
            [ops.relu(_linear(ops.reshape(m, (batch, -1, m.shape[-1])), self.embed_weight, self.embed_bias))
             + self.eye_embed[i] for i, m in enumerate(eyes)], axis=1)  # (B, N + M, dim)
        queries = ops.broadcast_to(self.query_embed[None], (batch, spec.queries, spec.dim))
        x = self.query_embed + self._dropout(self._attention(queries, tokens, training), training)
        x = _layer_norm(x, self.norm1_gamma, self.norm1_beta)
        hidden = self._dropout(ops.relu(_linear(x, self.ff1_weight, self.ff1_bias)), training)
        x = _layer_norm(x + self._dropout(_linear(hidden, self.ff2_weight, self.ff2_bias), training),
                        self.norm2_gamma, self.norm2_beta)
        logits = ops.reshape(ops.einsum("bkd,kdg->bkg", x, self.group_weight), (batch, spec.queries * spec.group))
        return logits[:, : spec.units] + self.group_bias

    def _attention(self, queries, tokens, training):
        """``nn.MultiheadAttention(queries, tokens, tokens)``: (B, K, dim)."""
        spec = self.spec
        d, heads = spec.dim, spec.heads
        w_q, w_k, w_v = ops.split(self.in_proj_weight, 3, axis=0)
        b_q, b_k, b_v = ops.split(self.in_proj_bias, 3, axis=0)

        def split_heads(x):  # (B, L, dim) -> (B, heads, L, dim / heads)
            return ops.transpose(ops.reshape(x, (ops.shape(x)[0], -1, heads, d // heads)), (0, 2, 1, 3))

        q = split_heads(_linear(queries, w_q, b_q)) * (d // heads) ** -0.5
        k, v = split_heads(_linear(tokens, w_k, b_k)), split_heads(_linear(tokens, w_v, b_v))
        weights = self._dropout(_softmax(ops.matmul(q, ops.transpose(k, (0, 1, 3, 2)))), training)
        out = ops.reshape(ops.transpose(ops.matmul(weights, v), (0, 2, 1, 3)), (ops.shape(queries)[0], -1, d))
        return _linear(out, self.out_proj_weight, self.out_proj_bias)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.spec.units)

    def torch_variables(self) -> dict:
        """torch parameter name (under this layer's module) -> (variable, ``keras_odir.weights`` transform)."""
        variables = (self.embed_weight, self.embed_bias, self.eye_embed, self.query_embed,
                     self.in_proj_weight, self.in_proj_bias, self.out_proj_weight, self.out_proj_bias,
                     self.norm1_gamma, self.norm1_beta, self.ff1_weight, self.ff1_bias, self.ff2_weight,
                     self.ff2_bias, self.norm2_gamma, self.norm2_beta, self.group_weight, self.group_bias)
        return {name: (variable, "same") for name, variable in zip(MLDecoderSpec.state_names, variables, strict=True)}

    def get_config(self):
        spec = self.spec
        return {**super().get_config(), "units": spec.units, "queries": spec.queries, "dim": spec.dim,
                "heads": spec.heads, "ff": spec.ff, "rate": self.rate, "seed": self.seed}


def _linear(x, weight, bias):
    """torch's ``F.linear``: x W^T + b, W (out, in)."""
    return ops.matmul(x, ops.transpose(weight)) + bias


def _layer_norm(x, gamma, beta):
    mean = ops.mean(x, axis=-1, keepdims=True)
    variance = ops.mean(ops.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * ops.rsqrt(variance + _EPSILON) * gamma + beta
