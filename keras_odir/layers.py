"""Layers shared by the Keras backbones.

On the torch backend, with channels_last data, the convolution (dense and depthwise), padding, pooling and
BatchNorm layers run one torch kernel without Keras' layout copies (``keras_odir.torch_kernels``); every other backend
runs Keras' own ops.
"""

from __future__ import annotations

import math

import keras
from keras import layers, ops

import keras_odir.initializers as initializers

TORCH = keras.backend.backend() == "torch"
if TORCH:
    import keras_odir.torch_kernels as torch_kernels


def image_input(input_shape=None, data_format: str | None = None) -> tuple[keras.KerasTensor, str]:
    """A backbone's input ``image`` and its data format (default: Keras' image data format).

    ``input_shape``: (H, W, 3) for channels_last (default (None, None, 3)) or (3, H, W) for channels_first.
    """
    data_format = data_format or keras.config.image_data_format()
    if data_format not in ("channels_last", "channels_first"):
        raise ValueError(f"data_format must be 'channels_last' or 'channels_first', not {data_format!r}.")
    if input_shape is None:
        input_shape = (None, None, 3) if data_format == "channels_last" else (3, None, None)
    return keras.Input(shape=tuple(input_shape), name="image"), data_format


def _copy_free(layer) -> bool:
    """Whether a convolution layer runs its copy-free torch kernel: the torch backend, channels_last, no dilation,
    ``valid`` padding or ``same`` with stride 1 and an odd square kernel (symmetric: torch's padding)."""
    height, width = layer.kernel_size
    return (TORCH and layer.data_format == "channels_last" and tuple(layer.dilation_rate) == (1, 1)
            and (layer.padding == "valid" or (tuple(layer.strides) == (1, 1) and height == width and height % 2)))


def _torch_padding(layer) -> int:
    return 0 if layer.padding == "valid" else layer.kernel_size[0] // 2


@keras.saving.register_keras_serializable(package="keras_odir")
class ChannelsLastConv2D(layers.Conv2D):
    """Keras' Conv2D (kernel HWIO, saved and converted as usual) with a copy-free torch path.

    Torch backend, channels_last, no groups or dilation, ``valid`` or stride-1 ``same`` padding:
    ``torch_kernels.conv2d_nhwc`` (the input as a channels_last view, the kernel kept in (O, H, W, I) memory
    order so that its OIHW view is channels_last too; the bias and a ReLU in the same call). Otherwise Keras' conv.
    """

    def _fast(self) -> bool:
        return self.groups == 1 and _copy_free(self)

    def build(self, input_shape):
        super().build(input_shape)
        if self._fast():
            torch_kernels.keep_oihw_layout(self.kernel.value)

    def call(self, inputs):
        if not self._fast():
            return super().call(inputs)
        # the bias and a ReLU in the same torch call (a conv with BatchNorm folded in: keras_odir.folding)
        relu = self.activation is keras.activations.relu
        out = torch_kernels.conv2d_nhwc(torch_kernels.tensor(inputs), torch_kernels.tensor(self.kernel),
                                        self.strides, _torch_padding(self),
                                        bias=torch_kernels.tensor(self.bias) if self.use_bias else None, relu=relu)
        return out if relu else self.activation(out)


@keras.saving.register_keras_serializable(package="keras_odir")
class ChannelsLastDepthwiseConv2D(layers.DepthwiseConv2D):
    """Keras' DepthwiseConv2D (kernel (kh, kw, C, M), saved and converted as usual) with the copy-free torch path
    of :class:`ChannelsLastConv2D`, in the same cases: ``torch_kernels.depthwise_conv2d_nhwc``, one grouped
    convolution with the bias (the kernel kept in (C, M, kh, kw) memory order, so that its torch form is a view).
    Otherwise Keras' depthwise conv, which copies the input, the kernel and the output."""

    def build(self, input_shape):
        super().build(input_shape)
        if _copy_free(self):
            torch_kernels.keep_depthwise_layout(self.kernel.value)

    def call(self, inputs):
        if not _copy_free(self):
            return super().call(inputs)
        out = torch_kernels.depthwise_conv2d_nhwc(
            torch_kernels.tensor(inputs), torch_kernels.tensor(self.kernel), self.strides, _torch_padding(self),
            bias=torch_kernels.tensor(self.bias) if self.use_bias else None)
        return self.activation(out)


@keras.saving.register_keras_serializable(package="keras_odir")
class ChannelsLastZeroPadding2D(layers.ZeroPadding2D):
    """Keras' ZeroPadding2D; on the torch backend with channels_last data, one ``torch_kernels.zero_pad_nhwc``
    call (``ops.pad`` builds a Keras operation object per call, whose name counter ``torch.compile`` guards on,
    so a compiled plan would recompile at every call)."""

    def call(self, inputs):
        if not (TORCH and self.data_format == "channels_last"):
            return super().call(inputs)
        return torch_kernels.zero_pad_nhwc(torch_kernels.tensor(inputs), self.padding)


class _CopyFreePooling:
    """A Keras pooling layer's call; on the torch backend with channels_last data and ``valid`` padding, torch's
    ``kind`` pooling on the input's channels_last view (``torch_kernels.pool2d_nhwc``). Keras' own makes an NCHW
    copy first, and torch's NCHW max pooling is several times slower than its channels_last one."""

    kind = "max"

    def call(self, inputs):
        if not (TORCH and self.data_format == "channels_last" and self.padding == "valid"):
            return super().call(inputs)
        return torch_kernels.pool2d_nhwc(torch_kernels.tensor(inputs), self.kind, self.pool_size, self.strides)


@keras.saving.register_keras_serializable(package="keras_odir")
class ChannelsLastMaxPooling2D(_CopyFreePooling, layers.MaxPooling2D):
    """Keras' MaxPooling2D with the copy-free torch path of ``_CopyFreePooling``."""


@keras.saving.register_keras_serializable(package="keras_odir")
class ChannelsLastAveragePooling2D(_CopyFreePooling, layers.AveragePooling2D):
    """Keras' AveragePooling2D with the copy-free torch path of ``_CopyFreePooling``."""

    kind = "average"


@keras.saving.register_keras_serializable(package="keras_odir")
class TorchConcatenate(layers.Concatenate):
    """Keras' Concatenate (its build checks the inputs' shapes); on the torch backend one ``torch.cat`` of the
    tensors as they are (Keras' converts and moves every input on every call: DenseNet joins up to 32 per layer)."""

    def call(self, inputs):
        if not TORCH:
            return super().call(inputs)
        return torch_kernels.concatenate([torch_kernels.tensor(x) for x in inputs], self.axis)


@keras.saving.register_keras_serializable(package="keras_odir")
class TorchBatchNormalization(layers.BatchNormalization):
    """BatchNormalization computing training-mode statistics as torch does.

    Two differences from Keras' own layer, both in training mode only: the batch variance is
    computed in two passes, mean((x - mean)^2), where Keras uses E[x^2] - E[x]^2, which loses
    precision to cancellation on small batches; and the moving variance is updated with the
    unbiased variance (times n / (n - 1), n = values per channel), as torch's running_var is.
    Statistics are computed in float32 (float64 for float64 inputs).
    On the torch backend it is torch's own fused batch_norm, with the same semantics.
    ``activation="relu"``: a ReLU follows, in the same layer; ``"silu"``: a SiLU (EfficientNet); on torch either in
    place on the fresh output.
    """

    def __init__(self, *args, activation: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if activation not in (None, "relu", "silu"):
            raise ValueError(f"activation must be None, 'relu' or 'silu', not {activation!r}")
        self.activation = activation

    def get_config(self):
        return {**super().get_config(), "activation": self.activation}

    def call(self, inputs, training=None, mask=None):
        if TORCH and mask is None and self.scale and self.center:
            return torch_kernels.batch_norm(
                torch_kernels.tensor(inputs), self.axis, self.moving_mean.value, self.moving_variance.value,
                torch_kernels.tensor(self.gamma), torch_kernels.tensor(self.beta),
                training=bool(training and self.trainable), momentum=self.momentum, epsilon=self.epsilon,
                activation=self.activation)
        outputs = self._normalize(inputs, training, mask)
        if self.activation == "relu":
            return ops.relu(outputs)
        return ops.silu(outputs) if self.activation == "silu" else outputs

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
            return torch_kernels.add_relu(torch_kernels.tensor(x), torch_kernels.tensor(shortcut))
        return ops.relu(ops.add(x, shortcut))

    def compute_output_shape(self, input_shape):
        return input_shape[0]


@keras.saving.register_keras_serializable(package="keras_odir")
class StochasticDepth(layers.Layer):
    """torchvision's ``StochasticDepth(rate, "row")``: in training, each sample's input (a residual branch) is
    zeroed with probability ``rate`` and kept ones are scaled by 1 / (1 - ``rate``); the identity in inference
    and while the layer is not trainable (a frozen backbone runs in inference mode, as its BatchNorm does).
    Under ``torch.compile`` the draws come from torch's generator (``--compile``'s dropout masks)."""

    def __init__(self, rate: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be in [0, 1], not {rate!r}")
        self.rate = rate
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=False):
        if not (training and self.trainable) or self.rate == 0.0:
            return inputs
        if TORCH and torch_kernels.compiling():
            # a seeded Keras draw cannot be traced: compiled code draws from torch's generator, as Keras' Dropout does
            return torch_kernels.row_dropout(torch_kernels.tensor(inputs), self.rate)
        noise_shape = (None,) + (1,) * (len(inputs.shape) - 1)  # one draw per sample
        return keras.random.dropout(inputs, self.rate, noise_shape=noise_shape, seed=self.seed_generator)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


@keras.saving.register_keras_serializable(package="keras_odir")
class FreezableDropout(layers.Dropout):
    """Keras' Dropout, the identity while the layer is not trainable: dropout inside a backbone, which runs in
    inference mode when frozen, as its BatchNorm and stochastic depth do (Keras' own Dropout ignores that)."""

    def call(self, inputs, training=False):
        return super().call(inputs, training=bool(training and self.trainable))


@keras.saving.register_keras_serializable(package="keras_odir")
class LayerScale(layers.Layer):
    """Per-channel scale (ConvNeXt's ``layer_scale``), initialised to ``init_value``, over channel ``axis``.

    Named after the torch module that owns the parameter (a ConvNeXt block, ``features_1_0``): its weight is
    that module's ``layer_scale``, shape (C, 1, 1) in torch, (C,) here (``torch_variables``).
    """

    def __init__(self, init_value: float = 1e-6, axis: int = -1, **kwargs):
        super().__init__(**kwargs)
        self.init_value = init_value
        self.axis = axis

    def build(self, input_shape):
        self.scale = self.add_weight(shape=(input_shape[self.axis],), name="layer_scale",
                                     initializer=keras.initializers.Constant(self.init_value))

    def call(self, inputs):
        shape = [1] * len(inputs.shape)
        shape[self.axis] = -1
        return inputs * ops.reshape(ops.cast(self.scale, inputs.dtype), shape)

    def torch_variables(self) -> dict:
        """torch parameter name (under this layer's module) -> (variable, ``keras_odir.weights`` transform)."""
        return {"layer_scale": (self.scale, "channel")}

    def get_config(self):
        return {**super().get_config(), "init_value": self.init_value, "axis": self.axis}


@keras.saving.register_keras_serializable(package="keras_odir")
class SqueezeExcitation(layers.Layer):
    """torchvision's ``SqueezeExcitation`` with SiLU (EfficientNet's): ``x * sigmoid(fc2(silu(fc1(m))))``, ``m``
    the mean of ``x`` over the image, ``fc1``/``fc2`` 1x1 convs with bias (``squeeze_channels`` between them).

    One layer named after the torch module (``features_1_0_block_1``); its kernels are stored as 1x1 conv
    kernels (HWIO) and map to torch's ``fc1.weight``/``fc1.bias``/``fc2.*`` (``torch_variables``). On the torch
    backend with channels_last data, ``torch_kernels.squeeze_excitation_nhwc``: torch ops without Keras' conversions.
    """

    def __init__(self, squeeze_channels: int, data_format: str = "channels_last", **kwargs):
        super().__init__(**kwargs)
        self.squeeze_channels = squeeze_channels
        self.data_format = data_format

    def build(self, input_shape):
        channels = input_shape[1 if self.data_format == "channels_first" else -1]
        # torchvision's EfficientNet init: kaiming_normal_(mode="fan_out"), zero bias
        init = initializers.VarianceScaling(2.0, "fan_out", "untruncated_normal")
        self.fc1_kernel = self.add_weight(shape=(1, 1, channels, self.squeeze_channels), initializer=init,
                                          name="fc1_kernel")
        self.fc1_bias = self.add_weight(shape=(self.squeeze_channels,), initializer="zeros", name="fc1_bias")
        self.fc2_kernel = self.add_weight(shape=(1, 1, self.squeeze_channels, channels), initializer=init,
                                          name="fc2_kernel")
        self.fc2_bias = self.add_weight(shape=(channels,), initializer="zeros", name="fc2_bias")

    def call(self, inputs):
        first = self.data_format == "channels_first"
        if TORCH and not first:
            return torch_kernels.squeeze_excitation_nhwc(
                torch_kernels.tensor(inputs), *(torch_kernels.tensor(w) for w in (
                    self.fc1_kernel, self.fc1_bias, self.fc2_kernel, self.fc2_bias)))
        scale = ops.mean(inputs, axis=(2, 3) if first else (1, 2))
        scale = ops.silu(ops.matmul(scale, ops.reshape(self.fc1_kernel, self.fc1_kernel.shape[2:])) + self.fc1_bias)
        scale = ops.sigmoid(ops.matmul(scale, ops.reshape(self.fc2_kernel, self.fc2_kernel.shape[2:])) + self.fc2_bias)
        scale = ops.expand_dims(scale, (2, 3) if first else (1, 2))
        return inputs * ops.cast(scale, inputs.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def torch_variables(self) -> dict:
        """torch parameter name (under this layer's module) -> (variable, ``keras_odir.weights`` transform)."""
        return {"fc1.weight": (self.fc1_kernel, "conv"), "fc1.bias": (self.fc1_bias, "same"),
                "fc2.weight": (self.fc2_kernel, "conv"), "fc2.bias": (self.fc2_bias, "same")}

    def get_config(self):
        return {**super().get_config(), "squeeze_channels": self.squeeze_channels, "data_format": self.data_format}
