"""The EfficientNet (V1) family (torchvision's ``efficientnet_b*``): its spec, MBConv blocks, torch key layout
and initialisation."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from odir_core.model.backbone import BackboneSpec, norm_keys
from odir_core.model.torch_init import kaiming_normal

NAME = "efficientnet"
# torchvision's EfficientNet-B0 stages: (expand ratio, kernel, stride, in channels, out channels, blocks)
B0_STAGES = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
             (6, 5, 1, 80, 112, 3), (6, 5, 2, 112, 192, 4), (6, 3, 1, 192, 320, 1))


def _make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's channel rounding: the nearest multiple of ``divisor``, but never 10% below ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


@dataclass(frozen=True)
class MBConv:
    """One MBConv block of an EfficientNet, torchvision's ``features.<stage>.<index>``: a 1x1 expansion to
    ``expanded`` channels (none when that is ``in_channels``), a depthwise ``kernel`` conv with ``stride``,
    squeeze-excitation through ``squeeze`` channels, a 1x1 projection to ``out_channels``; plus the input,
    through stochastic depth with ``drop_rate``, when the shape is kept (``residual``)."""

    stage: int
    index: int
    in_channels: int
    expanded: int
    out_channels: int
    kernel: int
    stride: int
    squeeze: int
    drop_rate: float

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_channels == self.out_channels


def mbconv_blocks(spec: BackboneSpec) -> tuple[MBConv, ...]:
    """The MBConv blocks of EfficientNet ``spec``: B0's stages with channels scaled by ``width_mult`` and
    blocks by ``depth_mult`` as torchvision does; the i-th of n blocks drops with ``stochastic_depth * i / n``."""
    stages = [(ratio, kernel, stride, _make_divisible(cin * spec.width_mult), _make_divisible(cout * spec.width_mult),
               math.ceil(count * spec.depth_mult))
              for ratio, kernel, stride, cin, cout, count in B0_STAGES]
    total = sum(stage[-1] for stage in stages)
    found: list[MBConv] = []
    for stage, (ratio, kernel, stride, cin, cout, count) in enumerate(stages, start=1):
        for index in range(count):
            channels = cin if index == 0 else cout
            found.append(MBConv(stage, index, channels, _make_divisible(channels * ratio), cout, kernel,
                                stride if index == 0 else 1, max(1, channels // 4),
                                spec.stochastic_depth * len(found) / total))
    return tuple(found)


def _conv_bn_keys(prefix: str) -> list[str]:
    """Keys of torchvision's ``Conv2dNormActivation`` (conv without bias, BatchNorm) at ``prefix``."""
    return [f"{prefix}.0.weight", *norm_keys(f"{prefix}.1")]


def state_keys(spec: BackboneSpec) -> frozenset[str]:
    """torchvision EfficientNet state_dict keys without ``classifier`` and ``num_batches_tracked``."""
    mbconvs = mbconv_blocks(spec)
    keys = _conv_bn_keys("features.0") + _conv_bn_keys(f"features.{mbconvs[-1].stage + 1}")
    for block in mbconvs:
        prefix = f"features.{block.stage}.{block.index}.block"
        first = int(block.expanded != block.in_channels)  # index of the depthwise conv: after the expansion
        if first:
            keys += _conv_bn_keys(f"{prefix}.0")
        keys += _conv_bn_keys(f"{prefix}.{first}") + _conv_bn_keys(f"{prefix}.{first + 2}")
        keys += [f"{prefix}.{first + 1}.fc{i}.{p}" for i in (1, 2) for p in ("weight", "bias")]
    return frozenset(keys)


def backbone(name: str, width_mult: float, depth_mult: float, dropout: float,
             checkpoints: dict[str, str]) -> BackboneSpec:
    """torchvision's ``name``: B0 with channels scaled by ``width_mult``, blocks by ``depth_mult``."""
    spec = BackboneSpec(
        name=name, family=NAME, features=0, torchvision=name, classifier="classifier.1",
        imagenet_checkpoints=checkpoints, gradcam_stage="features.8",
        # the blocks after which the resolution halves next: 1/2, 1/4, 1/8, 1/16 of the input
        earlier_stages=("features.1", "features.2", "features.3", "features.5"), width_mult=width_mult,
        depth_mult=depth_mult, dropout=dropout, stochastic_depth=0.2,
    )
    # the last 1x1 conv widens the last block's output four times
    return replace(spec, features=4 * mbconv_blocks(spec)[-1].out_channels, state_keys=state_keys(spec))


def initial_weight(key: str, shape: tuple[int, ...], rng: np.random.Generator,
                   spec: BackboneSpec) -> np.ndarray | None:
    """A convolution's kernel: ``kaiming_normal_(mode="fan_out")``; None for what the family has no rule for."""
    return kaiming_normal(shape, "fan_out", rng) if key.endswith(".weight") and len(shape) == 4 else None


def depth_count(spec: BackboneSpec) -> int:
    """Depths of layer-wise learning-rate decay (``odir_core.training.param_groups``): one per MBConv stage."""
    return mbconv_blocks(spec)[-1].stage


def depth_of(key: str, spec: BackboneSpec) -> int:
    """The depth of a backbone key ``features.<i>...``: ``i`` (0: the stem conv, 1..S: the MBConv stages, S + 1:
    the last 1x1 conv)."""
    return int(key.split(".")[1])
