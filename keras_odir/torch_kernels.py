"""Torch-backend kernels for ``keras_odir.layers``: convolution (dense and depthwise), pooling and BatchNorm on
NHWC data without layout copies. Imported only when the Keras backend is torch.

Keras' torch convolution makes every NHWC input NCHW-contiguous, transposes the HWIO kernel to
OIHW on every call, and makes the NCHW output NHWC-contiguous again: three copies per layer.
A permuted view of an NHWC tensor is already an NCHW tensor in torch's channels_last memory
format, which oneDNN convolves natively and returns in the same format, so the view back to
NHWC is contiguous without a copy.
"""

from __future__ import annotations

import keras
import torch
import torch.nn.functional as F


def tensor(x) -> torch.Tensor:
    """``x`` as a torch tensor, without Keras' conversion where it is one already (a layer's input: Keras' call, or
    the model's plan, has converted it) or a variable (its value, cast in an autocast scope)."""
    if isinstance(x, torch.Tensor):
        return x
    return x.value if isinstance(x, keras.Variable) else keras.ops.convert_to_tensor(x)


def keep_oihw_layout(kernel: torch.nn.Parameter) -> None:
    """Store an HWIO kernel's values in (O, H, W, I) memory order, in place (the same parameter object: the
    optimizer and Keras keep tracking it; assignments copy into this layout). Its OIHW view is then a channels_last
    tensor, which the convolution takes without a copy, forward and backward."""
    with torch.no_grad():
        kernel.data = kernel.data.permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last).permute(2, 3, 1, 0)


def _torch_form(function, kernel: torch.Tensor) -> torch.Tensor:
    """``kernel`` in the form the convolution takes, ``function.form(kernel)``: through the autograd ``function``
    while a gradient is recorded for it, so that its gradient comes back as a tensor of its own rather than a view
    of the convolution's weight gradient (autograd then adds the second eye's gradient into the first in place: a
    view's storage is shared with its base, which autograd never overwrites); else the plain form, without a
    Function's overhead."""
    if kernel.requires_grad and torch.is_grad_enabled():
        return function.apply(kernel)
    return function.form(kernel)


class _KernelOIHW(torch.autograd.Function):
    """An HWIO kernel as OIHW in channels_last memory (O, H, W, I): a view of a kernel kept so, else a copy."""

    @staticmethod
    def form(kernel):
        return kernel.permute(3, 2, 0, 1).contiguous(memory_format=torch.channels_last)

    @staticmethod
    def forward(ctx, kernel):
        return _KernelOIHW.form(kernel)

    @staticmethod
    def backward(ctx, grad):
        return grad.permute(2, 3, 1, 0).detach()


def keep_depthwise_layout(kernel: torch.nn.Parameter) -> None:
    """Store a depthwise kernel (kh, kw, C, M) in (C, M, kh, kw) memory order, in place (as ``keep_oihw_layout``):
    its torch form (C * M, 1, kh, kw) is then a view."""
    with torch.no_grad():
        kernel.data = kernel.data.permute(2, 3, 0, 1).contiguous().permute(2, 3, 0, 1)


class _DepthwiseKernel(torch.autograd.Function):
    """A depthwise kernel (kh, kw, C, M) as torch's grouped-convolution weight (C * M, 1, kh, kw)."""

    @staticmethod
    def form(kernel):
        height, width, channels, multiplier = kernel.shape
        return kernel.permute(2, 3, 0, 1).reshape(channels * multiplier, 1, height, width)

    @staticmethod
    def forward(ctx, kernel):
        ctx.shape = tuple(kernel.shape)
        return _DepthwiseKernel.form(kernel)

    @staticmethod
    def backward(ctx, grad):
        height, width, channels, multiplier = ctx.shape
        return grad.reshape(channels, multiplier, height, width).permute(2, 3, 0, 1).detach()


def depthwise_conv2d_nhwc(inputs: torch.Tensor, kernel: torch.Tensor, strides, padding: int,
                          bias: torch.Tensor | None = None) -> torch.Tensor:
    """Depthwise convolution of NHWC ``inputs`` with a Keras depthwise ``kernel`` (kh, kw, C, M): output channel
    ``c * M + m`` from input channel ``c`` (Keras' order and torch's ``groups=C``), symmetric zero ``padding``."""
    out = F.conv2d(inputs.permute(0, 3, 1, 2), _torch_form(_DepthwiseKernel, kernel), bias, stride=tuple(strides),
                   padding=padding, groups=kernel.shape[2])
    return out.permute(0, 2, 3, 1)


def conv2d_nhwc(inputs: torch.Tensor, kernel: torch.Tensor, strides, padding: int,
                bias: torch.Tensor | None = None, relu: bool = False) -> torch.Tensor:
    """Convolution of NHWC ``inputs`` with an HWIO ``kernel`` and optional ``bias``, symmetric zero ``padding``.
    ``relu``: then ReLU in place (the convolution's backward does not need its output)."""
    out = F.conv2d(inputs.permute(0, 3, 1, 2), _torch_form(_KernelOIHW, kernel), bias, stride=tuple(strides),
                   padding=padding)
    if relu:
        out = out.relu_()
    return out.permute(0, 2, 3, 1)


def pool2d_nhwc(inputs: torch.Tensor, kind: str, pool_size, strides) -> torch.Tensor:
    """``"max"`` or ``"average"`` pooling of NHWC ``inputs`` (no padding) on their channels_last view: torch's
    channels_last pooling, no copy in or out."""
    pool = F.max_pool2d if kind == "max" else F.avg_pool2d
    return pool(inputs.permute(0, 3, 1, 2), tuple(pool_size), tuple(strides)).permute(0, 2, 3, 1)


def concatenate(tensors: list[torch.Tensor], axis: int) -> torch.Tensor:
    """``tensors`` joined along ``axis``."""
    return torch.cat(tensors, dim=axis)


def zero_pad_nhwc(inputs: torch.Tensor, padding) -> torch.Tensor:
    """NHWC ``inputs`` with ``padding`` ((top, bottom), (left, right)) zeros around the spatial dimensions."""
    (top, bottom), (left, right) = padding
    return F.pad(inputs, (0, 0, left, right, top, bottom))


def batch_norm(inputs, axis: int, moving_mean, moving_variance, gamma, beta, *, training: bool, momentum: float,
               epsilon: float, activation: str | None = None) -> torch.Tensor:
    """torch's batch_norm over channel ``axis`` of ``inputs`` (a view, no copy, when it is the last); in training
    it updates the moving statistics in place with torch's semantics (unbiased variance; ``momentum`` is
    Keras', the weight of the old value). ``activation`` ``"relu"`` or ``"silu"``: then that, in place (batch_norm's
    backward does not need its output, as in torchvision's ``ReLU(inplace=True)`` and ``SiLU(inplace=True)``)."""
    out = F.batch_norm(inputs.movedim(axis, 1), moving_mean, moving_variance, gamma, beta, training=training,
                       momentum=1.0 - momentum, eps=epsilon)
    if activation == "relu":
        out = out.relu_()
    elif activation == "silu":
        out = F.silu(out, inplace=True)
    return out.movedim(1, axis)


def squeeze_excitation_nhwc(inputs: torch.Tensor, fc1_kernel: torch.Tensor, fc1_bias: torch.Tensor,
                            fc2_kernel: torch.Tensor, fc2_bias: torch.Tensor) -> torch.Tensor:
    """``x * sigmoid(fc2(silu(fc1(m))))`` for NHWC ``x``, ``m`` its mean over the image (accumulated in at least
    float32, as Keras' ``ops.mean``), the fc kernels 1x1 HWIO (1, 1, in, out): two matrix products with their bias."""
    mean = inputs.mean((1, 2), dtype=torch.promote_types(inputs.dtype, torch.float32)).to(inputs.dtype)
    hidden = F.silu(torch.addmm(fc1_bias, mean, fc1_kernel[0, 0]), inplace=True)
    return inputs * torch.addmm(fc2_bias, hidden, fc2_kernel[0, 0]).sigmoid_()[:, None, None, :]


def add_relu(x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    """relu(x + shortcut) with one new tensor: the ReLU in place on the sum (add's backward needs no output)."""
    return torch.add(x, shortcut).relu_()


def compiling() -> bool:
    """Whether torch.compile is tracing the running code."""
    return torch.compiler.is_compiling()


def row_dropout(inputs: torch.Tensor, rate: float) -> torch.Tensor:
    """Each sample of ``inputs`` zeroed with probability ``rate``, the kept ones scaled by 1 / (1 - ``rate``)
    (torchvision's stochastic depth, "row"), the draws from torch's own generator."""
    keep = 1.0 - rate
    mask = torch.empty((inputs.shape[0],) + (1,) * (inputs.dim() - 1), dtype=inputs.dtype, device=inputs.device)
    return inputs * mask.bernoulli_(keep).div_(keep)
