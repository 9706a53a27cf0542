"""The dual-eye model as data (framework-free): heads as layer lists and a backbone registry.

``keras_odir.model`` and ``torch_odir.model`` both build from these declarations, and both
read a checkpoint's architecture from its keys alone (:func:`infer_architecture`). A dual
model is one backbone shared by both eyes, its pooled features concatenated [left, right],
then a head ending in ``NUM_LABELS`` logits. A torch state_dict of it holds
``backbone.`` + the torchvision model's own keys (only its classifier removed) and
``head.<i>.weight|bias`` for the i-th layer of the head.

Adding a backbone: one :class:`BackboneSpec` entry in ``BACKBONES`` (plus, for a new family, its
Keras file ``keras_odir/<family>.py``). Adding a head: one entry in ``HEADS``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from odir_core.data.normalization import IMAGENET_MEAN, IMAGENET_STD
from odir_core.errors import InputError
from odir_core.labels import NUM_LABELS


@dataclass(frozen=True)
class Linear:
    """A fully connected layer with bias (torch ``nn.Linear`` init); the last one of a head gives the logits."""

    units: int = NUM_LABELS


@dataclass(frozen=True)
class ReLU:
    """max(x, 0)."""


@dataclass(frozen=True)
class Dropout:
    """Dropout with drop probability ``rate`` (training only)."""

    rate: float


@dataclass(frozen=True)
class CrossEyeCorrelation:
    """Cross-eye spatial correlation (no weights): the first layer of a head that works on both eyes' last
    feature maps (before pooling) instead of their pooled features; it outputs [left, right] features.

    With the left map as ``L`` (N positions x C channels, N = H x W) and the right as ``R`` (M x C)::

        S     = L R^T / sqrt(C)                        (N x M: every left position against every right one)
        L_agg = softmax_rows(S) R                      (N x C: the right map, aggregated for each left position)
        R_agg = softmax_rows(S^T) L                    (M x C: and the other way round)
        out   = [mean_N(L + L_agg), mean_M(R + R_agg)]  (2C)

    After the spatial correlation module of DCNet (Li et al., "Dense Correlation Network for Automated
    Multi-Label Ocular Disease Detection with Paired Colour Fundus Photographs", ISBI 2020), which relates
    each position of one eye's feature map to every position of the other's and fuses the result; here
    without learned projections, fused by addition and global average pooling.
    """


HeadLayer = Linear | ReLU | Dropout | CrossEyeCorrelation
HEADS: dict[str, tuple[HeadLayer, ...]] = {
    "v0": (Linear(),),
    "v1": (Dropout(0.2), Linear()),
    "v2": (Linear(128), ReLU(), Dropout(0.5), Linear(64), ReLU(), Dropout(0.5), Linear()),
    "scm": (CrossEyeCorrelation(), Dropout(0.2), Linear()),
}
HEAD_HELP = ("classifier head: v0 Linear(8); v1 Dropout(0.2)+Linear(8); v2 MLP 128-64-8 (ReLU, Dropout 0.5); "
             "scm cross-eye spatial correlation of the last feature maps + Dropout(0.2)+Linear(8)")


def uses_feature_maps(head: str) -> bool:
    """Whether head ``head`` works on both eyes' feature maps (it starts with ``CrossEyeCorrelation``)."""
    return isinstance(head_layers(head)[0], CrossEyeCorrelation)


def head_layers(name: str) -> tuple[HeadLayer, ...]:
    """The layer list of head ``name``; index i is torch's ``head.<i>`` and Keras' ``head_<i>``."""
    try:
        return HEADS[name]
    except KeyError:
        raise ValueError(f"Unknown head {name!r}; choose one of {', '.join(HEADS)}.") from None


def head_keys(name: str) -> set[str]:
    """The torch state_dict keys of head ``name`` (``head.<i>.weight|bias`` of each Linear)."""
    return {f"head.{i}.{p}" for i, layer in enumerate(head_layers(name)) if isinstance(layer, Linear)
            for p in ("weight", "bias")}


def _resnet_keys(blocks: tuple[int, ...], bottleneck: bool) -> frozenset[str]:
    """torchvision ResNet state_dict keys without ``fc`` and ``num_batches_tracked``."""
    def bn(prefix):
        return [f"{prefix}.{p}" for p in ("weight", "bias", "running_mean", "running_var")]

    keys = ["conv1.weight", *bn("bn1")]
    convs = 3 if bottleneck else 2
    for stage, count in enumerate(blocks, start=1):
        for block in range(count):
            prefix = f"layer{stage}.{block}"
            for i in range(1, convs + 1):
                keys += [f"{prefix}.conv{i}.weight", *bn(f"{prefix}.bn{i}")]
            if block == 0 and (stage > 1 or bottleneck):
                keys += [f"{prefix}.downsample.0.weight", *bn(f"{prefix}.downsample.1")]
    return frozenset(keys)


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone: how each framework builds it, what it outputs, which weights it takes.

    ``family``: the Keras module ``keras_odir.<family>`` whose ``build_backbone(spec, ...)`` builds it;
    ``torchvision``: the constructor in ``torchvision.models``; ``classifier``: the torchvision module
    replaced by ``Identity`` (its keys are not part of the backbone); ``imagenet_checkpoints``:
    torchvision's file names and URLs, preferred first; ``gradcam_stage``: the torchvision module whose
    output (the last feature map, the input of the global pooling) Grad-CAM explains; ``mean``/``std``:
    the input normalisation its weights expect; ``blocks``/``bottleneck``: the family's depth settings;
    ``widths``: channels per stage (ConvNeXt); ``width_mult``/``depth_mult``: EfficientNet's scaling of B0's
    channels and blocks; ``dropout``: the dropout before torchvision's replaced Linear, kept in the backbone
    (EfficientNet); ``stochastic_depth``: torchvision's ``stochastic_depth_prob``, which each block scales
    by its depth;
    ``map_relu``: a ReLU follows ``gradcam_stage`` inside torchvision's ``forward`` (functional, so not
    part of that module's output), before the pooling; ``map_norm``: the torchvision module after the
    pooling that normalises each feature vector (ConvNeXt's ``classifier.0``), which a head on feature
    maps applies at every position of the map instead; ``earlier_stages``: the torchvision modules ending
    the earlier resolutions, early to late, which Grad-CAM explains instead when the last feature map is
    too small (``odir_core.evaluation.inference.choose_gradcam_stage``).
    """

    name: str
    family: str
    features: int
    torchvision: str
    classifier: str
    imagenet_checkpoints: dict[str, str]
    gradcam_stage: str
    earlier_stages: tuple[str, ...] = ()
    blocks: tuple[int, ...] = ()
    bottleneck: bool = False
    widths: tuple[int, ...] = ()
    width_mult: float = 1.0
    depth_mult: float = 1.0
    dropout: float = 0.0
    stochastic_depth: float = 0.0
    mean: tuple[float, ...] = tuple(IMAGENET_MEAN.tolist())
    std: tuple[float, ...] = tuple(IMAGENET_STD.tolist())
    map_relu: bool = False
    map_norm: str = ""
    state_keys: frozenset[str] = field(default=frozenset(), repr=False)


def _resnet(name: str, blocks: tuple[int, ...], bottleneck: bool, checkpoints: dict[str, str]) -> BackboneSpec:
    return BackboneSpec(
        name=name, family="resnet", features=512 * (4 if bottleneck else 1), torchvision=name, classifier="fc",
        imagenet_checkpoints=checkpoints, gradcam_stage="layer4",
        earlier_stages=("layer1", "layer2", "layer3"), blocks=blocks, bottleneck=bottleneck,
        state_keys=_resnet_keys(blocks, bottleneck),
    )


def _densenet_keys(blocks: tuple[int, ...]) -> frozenset[str]:
    """torchvision DenseNet state_dict keys without ``classifier`` and ``num_batches_tracked``."""
    def bn(prefix):
        return [f"{prefix}.{p}" for p in ("weight", "bias", "running_mean", "running_var")]

    keys = ["features.conv0.weight", *bn("features.norm0"), *bn("features.norm5")]
    for block, count in enumerate(blocks, start=1):
        for i in range(1, count + 1):
            prefix = f"features.denseblock{block}.denselayer{i}"
            keys += [*bn(f"{prefix}.norm1"), f"{prefix}.conv1.weight", *bn(f"{prefix}.norm2"), f"{prefix}.conv2.weight"]
        if block < len(blocks):
            keys += [*bn(f"features.transition{block}.norm"), f"features.transition{block}.conv.weight"]
    return frozenset(keys)


def _densenet(name: str, blocks: tuple[int, ...], features: int, checkpoints: dict[str, str]) -> BackboneSpec:
    return BackboneSpec(
        name=name, family="densenet", features=features, torchvision=name, classifier="classifier",
        imagenet_checkpoints=checkpoints, gradcam_stage="features",
        earlier_stages=tuple(f"features.denseblock{i}" for i in range(1, len(blocks))), blocks=blocks, map_relu=True,
        state_keys=_densenet_keys(blocks),
    )


def _conv_bn_keys(prefix: str) -> list[str]:
    """Keys of torchvision's ``Conv2dNormActivation`` (conv without bias, BatchNorm) at ``prefix``."""
    return [f"{prefix}.0.weight", *(f"{prefix}.1.{p}" for p in ("weight", "bias", "running_mean", "running_var"))]


# torchvision's EfficientNet-B0 stages: (expand ratio, kernel, stride, in channels, out channels, blocks)
_EFFICIENTNET_B0_STAGES = ((1, 3, 1, 32, 16, 1), (6, 3, 2, 16, 24, 2), (6, 5, 2, 24, 40, 2), (6, 3, 2, 40, 80, 3),
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


def efficientnet_blocks(spec: BackboneSpec) -> tuple[MBConv, ...]:
    """The MBConv blocks of EfficientNet ``spec``: B0's stages with channels scaled by ``width_mult`` and
    blocks by ``depth_mult`` as torchvision does; the i-th of n blocks drops with ``stochastic_depth * i / n``."""
    stages = [(ratio, kernel, stride, _make_divisible(cin * spec.width_mult), _make_divisible(cout * spec.width_mult),
               math.ceil(count * spec.depth_mult))
              for ratio, kernel, stride, cin, cout, count in _EFFICIENTNET_B0_STAGES]
    total = sum(stage[-1] for stage in stages)
    blocks: list[MBConv] = []
    for stage, (ratio, kernel, stride, cin, cout, count) in enumerate(stages, start=1):
        for index in range(count):
            channels = cin if index == 0 else cout
            blocks.append(MBConv(stage, index, channels, _make_divisible(channels * ratio), cout, kernel,
                                 stride if index == 0 else 1, max(1, channels // 4),
                                 spec.stochastic_depth * len(blocks) / total))
    return tuple(blocks)


def _efficientnet_keys(spec: BackboneSpec) -> frozenset[str]:
    """torchvision EfficientNet state_dict keys without ``classifier`` and ``num_batches_tracked``."""
    blocks = efficientnet_blocks(spec)
    keys = _conv_bn_keys("features.0") + _conv_bn_keys(f"features.{blocks[-1].stage + 1}")
    for block in blocks:
        prefix = f"features.{block.stage}.{block.index}.block"
        first = int(block.expanded != block.in_channels)  # index of the depthwise conv: after the expansion
        if first:
            keys += _conv_bn_keys(f"{prefix}.0")
        keys += _conv_bn_keys(f"{prefix}.{first}") + _conv_bn_keys(f"{prefix}.{first + 2}")
        keys += [f"{prefix}.{first + 1}.fc{i}.{p}" for i in (1, 2) for p in ("weight", "bias")]
    return frozenset(keys)


def _efficientnet(name: str, width_mult: float, depth_mult: float, dropout: float,
                  checkpoints: dict[str, str]) -> BackboneSpec:
    spec = BackboneSpec(
        name=name, family="efficientnet", features=0, torchvision=name, classifier="classifier.1",
        imagenet_checkpoints=checkpoints, gradcam_stage="features.8",
        # the blocks after which the resolution halves next: 1/2, 1/4, 1/8, 1/16 of the input
        earlier_stages=("features.1", "features.2", "features.3", "features.5"), width_mult=width_mult,
        depth_mult=depth_mult, dropout=dropout, stochastic_depth=0.2,
    )
    # the last 1x1 conv widens the last block's output four times
    return replace(spec, features=4 * efficientnet_blocks(spec)[-1].out_channels, state_keys=_efficientnet_keys(spec))


def _convnext_keys(blocks: tuple[int, ...]) -> frozenset[str]:
    """torchvision ConvNeXt state_dict keys without ``classifier.2`` (its LayerNorm ``classifier.0`` stays)."""
    keys = [f"{m}.{p}" for m in ("features.0.0", "features.0.1", "classifier.0") for p in ("weight", "bias")]
    for stage, count in enumerate(blocks):
        for i in range(count):
            prefix = f"features.{2 * stage + 1}.{i}"
            keys += [f"{prefix}.layer_scale"]
            keys += [f"{prefix}.block.{j}.{p}" for j in (0, 2, 3, 5) for p in ("weight", "bias")]
        if stage < len(blocks) - 1:  # the downsampling between stages: LayerNorm, 2x2/2 conv
            keys += [f"features.{2 * stage + 2}.{j}.{p}" for j in (0, 1) for p in ("weight", "bias")]
    return frozenset(keys)


def _convnext(name: str, blocks: tuple[int, ...], widths: tuple[int, ...], stochastic_depth: float,
              checkpoints: dict[str, str]) -> BackboneSpec:
    return BackboneSpec(
        name=name, family="convnext", features=widths[-1], torchvision=name, classifier="classifier.2",
        imagenet_checkpoints=checkpoints, gradcam_stage=f"features.{2 * len(blocks) - 1}",
        earlier_stages=tuple(f"features.{2 * i + 1}" for i in range(len(blocks) - 1)), blocks=blocks,
        widths=widths, stochastic_depth=stochastic_depth, map_norm="classifier.0", state_keys=_convnext_keys(blocks),
    )


_TORCHVISION_URL = "https://download.pytorch.org/models/"
BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": _resnet("resnet18", (2, 2, 2, 2), False, {
        "resnet18-f37072fd.pth": _TORCHVISION_URL + "resnet18-f37072fd.pth",  # IMAGENET1K_V1
    }),
    "resnet34": _resnet("resnet34", (3, 4, 6, 3), False, {
        "resnet34-b627a593.pth": _TORCHVISION_URL + "resnet34-b627a593.pth",  # IMAGENET1K_V1
    }),
    "resnet50": _resnet("resnet50", (3, 4, 6, 3), True, {
        "resnet50-11ad3fa6.pth": _TORCHVISION_URL + "resnet50-11ad3fa6.pth",  # IMAGENET1K_V2
        "resnet50-0676ba61.pth": _TORCHVISION_URL + "resnet50-0676ba61.pth",  # IMAGENET1K_V1
    }),
    "resnet101": _resnet("resnet101", (3, 4, 23, 3), True, {
        "resnet101-cd907fc2.pth": _TORCHVISION_URL + "resnet101-cd907fc2.pth",  # IMAGENET1K_V2
        "resnet101-63fe2227.pth": _TORCHVISION_URL + "resnet101-63fe2227.pth",  # IMAGENET1K_V1
    }),
    "densenet121": _densenet("densenet121", (6, 12, 24, 16), 1024, {
        "densenet121-a639ec97.pth": _TORCHVISION_URL + "densenet121-a639ec97.pth",  # IMAGENET1K_V1
    }),
    "efficientnet_b0": _efficientnet("efficientnet_b0", 1.0, 1.0, 0.2, {
        "efficientnet_b0_rwightman-7f5810bc.pth": _TORCHVISION_URL + "efficientnet_b0_rwightman-7f5810bc.pth",
    }),  # IMAGENET1K_V1
    "efficientnet_b3": _efficientnet("efficientnet_b3", 1.2, 1.4, 0.3, {
        "efficientnet_b3_rwightman-b3899882.pth": _TORCHVISION_URL + "efficientnet_b3_rwightman-b3899882.pth",
    }),  # IMAGENET1K_V1
    "convnext_tiny": _convnext("convnext_tiny", (3, 3, 9, 3), (96, 192, 384, 768), 0.1, {
        "convnext_tiny-983f1562.pth": _TORCHVISION_URL + "convnext_tiny-983f1562.pth",  # IMAGENET1K_V1
    }),
}
DEFAULT_BACKBONE = "resnet50"


def backbone_spec(name: str) -> BackboneSpec:
    """The registry entry of backbone ``name``."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"Unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}.") from None


class ArchitectureError(InputError):
    """State-dict keys that match no registered backbone or head (the message says what was found)."""


def infer_backbone(keys: Iterable[str]) -> BackboneSpec:
    """The backbone whose torchvision keys (classifier and ``num_batches_tracked`` aside) are exactly ``keys``."""
    found = frozenset(k for k in keys if not k.endswith("num_batches_tracked"))
    for spec in BACKBONES.values():
        if found == spec.state_keys:
            return spec
    best = min(BACKBONES.values(), key=lambda spec: len(found ^ spec.state_keys))
    extra, missing = sorted(found - best.state_keys), sorted(best.state_keys - found)
    raise ArchitectureError(
        f"backbone keys match no backbone of {', '.join(BACKBONES)}; closest {best.name}: "
        f"{len(extra)} unknown (e.g. {', '.join(extra[:3]) or '-'}), {len(missing)} missing "
        f"(e.g. {', '.join(missing[:3]) or '-'})")


def infer_head(keys: Iterable[str]) -> str:
    """The head whose ``head.*`` keys are exactly the ``head.*`` keys among ``keys``."""
    found = {k for k in keys if k.startswith("head.")}
    for name in HEADS:
        if found == head_keys(name):
            return name
    layers = sorted({int(k.split(".")[1]) for k in found if k.split(".")[1].isdigit()})
    raise ArchitectureError(f"head layers {layers} match no head of {', '.join(HEADS)}")


def infer_architecture(keys: Iterable[str]) -> tuple[BackboneSpec, str]:
    """(backbone, head) of a dual-model state_dict (keys ``backbone.*`` and ``head.*``)."""
    keys = list(keys)
    others = [k for k in keys if not k.startswith(("backbone.", "head."))]
    if others:
        raise ArchitectureError(f"not a dual-model state_dict: keys outside backbone.* and head.*, e.g. {others[:3]}")
    backbone = infer_backbone(k[len("backbone."):] for k in keys if k.startswith("backbone."))
    return backbone, infer_head(keys)


def check_architecture(keys: Iterable[str], backbone: str, head: str, source: str = "checkpoint") -> None:
    """Raise ``ArchitectureError`` unless a dual-model state_dict's keys hold ``backbone`` and ``head``."""
    spec, found = infer_architecture(keys)
    if (spec.name, found) != (backbone, head):
        raise ArchitectureError(f"{source} holds backbone {spec.name} with head {found}, not {backbone} with "
                                f"{head}: pass --backbone {spec.name} --head {found}")
