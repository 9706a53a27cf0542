"""The ResNet family (torchvision's ``resnet*``, v1.5): its spec, torch key layout and initialisation."""

from __future__ import annotations

import re

import numpy as np

from odir_core.model.backbone import BackboneSpec, norm_keys
from odir_core.model.torch_init import kaiming_normal

NAME = "resnet"


def state_keys(blocks: tuple[int, ...], bottleneck: bool) -> frozenset[str]:
    """torchvision ResNet state_dict keys without ``fc`` and ``num_batches_tracked``."""
    keys = ["conv1.weight", *norm_keys("bn1")]
    convs = 3 if bottleneck else 2
    for stage, count in enumerate(blocks, start=1):
        for block in range(count):
            prefix = f"layer{stage}.{block}"
            for i in range(1, convs + 1):
                keys += [f"{prefix}.conv{i}.weight", *norm_keys(f"{prefix}.bn{i}")]
            if block == 0 and (stage > 1 or bottleneck):
                keys += [f"{prefix}.downsample.0.weight", *norm_keys(f"{prefix}.downsample.1")]
    return frozenset(keys)


def backbone(name: str, blocks: tuple[int, ...], bottleneck: bool, checkpoints: dict[str, str]) -> BackboneSpec:
    """torchvision's ``name``: ``blocks`` per stage, bottleneck or basic blocks."""
    return BackboneSpec(
        name=name, family=NAME, features=512 * (4 if bottleneck else 1), torchvision=name, classifier="fc",
        imagenet_checkpoints=checkpoints, gradcam_stage="layer4",
        earlier_stages=("layer1", "layer2", "layer3"), blocks=blocks, bottleneck=bottleneck,
        state_keys=state_keys(blocks, bottleneck),
    )


def initial_weight(key: str, shape: tuple[int, ...], rng: np.random.Generator,
                   spec: BackboneSpec) -> np.ndarray | None:
    """A convolution's kernel: ``kaiming_normal_(mode="fan_out")``; None for what the family has no rule for."""
    return kaiming_normal(shape, "fan_out", rng) if key.endswith(".weight") and len(shape) == 4 else None


def depth_count(spec: BackboneSpec) -> int:
    """Depths of layer-wise learning-rate decay (``odir_core.training.param_groups``): one per stage."""
    return len(spec.blocks)


def depth_of(key: str, spec: BackboneSpec) -> int:
    """The depth of a backbone key: 0 for the stem (``conv1``, ``bn1``), ``s`` for ``layer<s>``."""
    stage = re.match(r"layer(\d+)\.", key)
    return int(stage.group(1)) if stage else 0
