"""BatchNorm folded into the preceding convolution, for a finished model's inference.

In inference a BatchNormalization is an affine map per channel, ``(x - mean) * gamma / sqrt(var + eps) + beta``;
after a convolution whose output nothing else uses, it is the same convolution with its kernel scaled per
output channel by ``gamma / sqrt(var + eps)`` and the bias ``beta + (bias - mean) * gamma / sqrt(var + eps)``.
:func:`fold_batchnorm` builds that model: one layer call fewer per fold. The folded weights are computed in
float64 and cast to the variables' dtype, so the outputs match the unfolded model's up to float rounding
(float32: within ``rtol=1e-5, atol=1e-5`` of the logits' scale, ``tests/test_folding.py``).

A BatchNorm's activation (``TorchBatchNormalization(activation="relu"|"silu")``) becomes the convolution's.
BatchNorms before a convolution (DenseNet's pre-activation) or after anything else stay as they are.
Only for a finished model: the folded weights are a copy, so the model must not train after folding.
"""

from __future__ import annotations

import keras
import numpy as np

from keras_odir.layers import TorchBatchNormalization

_CONVS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)  # Conv2D subclasses (ChannelsLastConv2D) included
_NORMS = (keras.layers.BatchNormalization, TorchBatchNormalization)  # exactly these classes (a subclass may differ)


def _channel_axis(conv) -> int:
    return 1 if conv.data_format == "channels_first" else 3


def _foldable(conv, norm) -> bool:
    """Whether ``norm`` after ``conv`` is an affine map per output channel of the conv that the conv can absorb."""
    axis = norm.axis if isinstance(norm.axis, int) else (list(norm.axis)[0] if len(norm.axis) == 1 else None)
    return (type(norm) in _NORMS and axis is not None and axis % 4 == _channel_axis(conv)
            and not norm.renorm and conv.activation in (None, keras.activations.linear)
            and _activation(norm) in ("linear", "relu", "silu"))


def _activation(norm) -> str:
    """The activation a BatchNorm applies after normalising (only ``TorchBatchNormalization`` has one)."""
    if type(norm) is TorchBatchNormalization:
        return norm.activation or "linear"
    return "linear"


def _pairs(model: keras.Model) -> dict[int, keras.layers.Layer]:
    """{id(conv): BatchNorm} of the folds in ``model``'s own graph (not its sub-models'): the BatchNorm's only
    input is the output of a conv, which no other layer of the graph (nor the graph's output) uses."""
    uses: dict[int, int] = {}
    for tensor in keras.tree.flatten(model.outputs):
        uses[id(tensor)] = uses.get(id(tensor), 0) + 1
    producers = {}
    for layer in model.operations:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        for tensor in keras.tree.flatten(layer.input):
            uses[id(tensor)] = uses.get(id(tensor), 0) + 1
        if isinstance(layer, _CONVS):
            producers[id(layer.output)] = layer
    pairs = {}
    for norm in model.operations:
        if not isinstance(norm, keras.layers.BatchNormalization) or keras.tree.is_nested(norm.input):
            continue
        conv = producers.get(id(norm.input))
        if conv is not None and uses[id(norm.input)] == 1 and _foldable(conv, norm):
            pairs[id(conv)] = norm
    return pairs


def _folded_weights(conv, norm) -> tuple[np.ndarray, np.ndarray]:
    """(kernel, bias) of ``conv`` followed by ``norm`` in inference, computed in float64."""
    kernel = keras.ops.convert_to_numpy(conv.kernel).astype(np.float64)
    channels = norm.moving_mean.shape[0]
    mean = keras.ops.convert_to_numpy(norm.moving_mean).astype(np.float64)
    variance = keras.ops.convert_to_numpy(norm.moving_variance).astype(np.float64)
    gamma = keras.ops.convert_to_numpy(norm.gamma).astype(np.float64) if norm.scale else np.ones(channels)
    beta = keras.ops.convert_to_numpy(norm.beta).astype(np.float64) if norm.center else np.zeros(channels)
    bias = keras.ops.convert_to_numpy(conv.bias).astype(np.float64) if conv.use_bias else np.zeros(channels)
    scale = gamma / np.sqrt(variance + norm.epsilon)
    if isinstance(conv, keras.layers.DepthwiseConv2D):  # (kh, kw, in, multiplier): output channel in * m + j
        kernel = kernel * scale.reshape(kernel.shape[2:])
    else:  # (kh, kw, in / groups, out)
        kernel = kernel * scale
    return kernel, beta + (bias - mean) * scale


def _folded_conv(conv, norm):
    """A new conv layer (``conv``'s class, name and arguments, with a bias and ``norm``'s activation) holding the
    folded weights. Made from the public attributes rather than ``get_config``, whose serialization imports
    TensorFlow on every backend; built with zero weights, as the folded ones replace them (a random draw is one
    compiled program per shape on jax)."""
    common = dict(kernel_size=conv.kernel_size, strides=conv.strides, padding=conv.padding,
                  data_format=conv.data_format, dilation_rate=conv.dilation_rate, activation=_activation(norm),
                  use_bias=True, dtype=conv.dtype_policy, name=conv.name)
    if isinstance(conv, keras.layers.DepthwiseConv2D):
        folded = conv.__class__(depth_multiplier=conv.depth_multiplier, depthwise_initializer="zeros", **common)
    else:
        folded = conv.__class__(conv.filters, groups=conv.groups, kernel_initializer="zeros", **common)
    folded.build(conv.input.shape)
    kernel, bias = _folded_weights(conv, norm)
    folded.kernel.assign(kernel.astype(folded.kernel.dtype))
    folded.bias.assign(bias.astype(folded.bias.dtype))
    return folded


def _functional_models(model: keras.Model):
    yield model
    for layer in model.layers:
        if isinstance(layer, keras.Model) and hasattr(layer, "operations") and not isinstance(layer,
                                                                                              keras.Sequential):
            yield from _functional_models(layer)


def fold_batchnorm(model: keras.Model) -> keras.Model:
    """A new functional model computing ``model``'s inference outputs with every foldable BatchNorm folded into
    the conv before it, and removed from the graph; nested functional models (the shared backbone) are folded
    too. ``model`` is left as it is; the new model shares its other layers (and their weights) with it."""
    pairs = {}  # id(conv) -> its BatchNorm
    for sub in _functional_models(model):
        pairs.update(_pairs(sub))
    norms = {id(norm): norm for norm in pairs.values()}
    folded = {}  # id(folded conv) -> its BatchNorm
    outputs = {}  # id(a folded conv's output) -> the BatchNorm that alone may take it, until it has
    called = set()  # ids of the folded convs called

    def clone(layer):
        if id(layer) not in pairs:
            return layer  # shared, weights included; a folded BatchNorm is never called (``call``)
        conv = _folded_conv(layer, pairs[id(layer)])
        folded[id(conv)] = pairs[id(layer)]
        return conv

    def call(layer, *args, **kwargs):
        taken = [outputs[id(t)] for t in keras.tree.flatten((args, kwargs)) if id(t) in outputs]
        if taken and (len(taken) > 1 or taken[0] is not layer):
            raise ValueError(f"{layer.name!r} takes the output of a conv folded with {taken[0].name!r}")
        if id(layer) in norms:
            if not taken:
                raise ValueError(f"{layer.name!r} was folded into a conv but is called on something else")
            del outputs[id(args[0])]
            return args[0]  # the folded conv's output is already this BatchNorm's
        out = layer(*args, **kwargs)
        if id(layer) in folded:
            if id(layer) in called:
                raise ValueError(f"{layer.name!r} is called more than once; its fold holds for one call")
            called.add(id(layer))
            outputs[id(out)] = folded[id(layer)]
        return out

    return keras.models.clone_model(model, clone_function=clone, call_function=call, recursive=True)
