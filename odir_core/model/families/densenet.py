"""The DenseNet family (torchvision's ``densenet*``, DenseNet-BC): its spec, torch key layout and initialisation."""

from __future__ import annotations

import re

import numpy as np

from odir_core.model.backbone import BackboneSpec, norm_keys
from odir_core.model.torch_init import kaiming_normal

NAME = "densenet"
# torchvision's DenseNet checkpoints keep the key names of its first release (``norm.1``, ``conv.2``);
# torchvision renames them on loading (``norm1``, ``conv2``), and so does odir_core.model.checkpoints
LEGACY_KEY = (r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$",
              r"\1\2")


def state_keys(blocks: tuple[int, ...]) -> frozenset[str]:
    """torchvision DenseNet state_dict keys without ``classifier`` and ``num_batches_tracked``."""
    keys = ["features.conv0.weight", *norm_keys("features.norm0"), *norm_keys("features.norm5")]
    for block, count in enumerate(blocks, start=1):
        for i in range(1, count + 1):
            prefix = f"features.denseblock{block}.denselayer{i}"
            keys += [*norm_keys(f"{prefix}.norm1"), f"{prefix}.conv1.weight", *norm_keys(f"{prefix}.norm2"),
                     f"{prefix}.conv2.weight"]
        if block < len(blocks):
            keys += [*norm_keys(f"features.transition{block}.norm"), f"features.transition{block}.conv.weight"]
    return frozenset(keys)


def backbone(name: str, blocks: tuple[int, ...], features: int, checkpoints: dict[str, str]) -> BackboneSpec:
    """torchvision's ``name``: ``blocks`` layers per dense block, ``features`` channels out."""
    return BackboneSpec(
        name=name, family=NAME, features=features, torchvision=name, classifier="classifier",
        imagenet_checkpoints=checkpoints, gradcam_stage="features",
        earlier_stages=tuple(f"features.denseblock{i}" for i in range(1, len(blocks))), blocks=blocks, map_relu=True,
        renamed_keys=(LEGACY_KEY,), state_keys=state_keys(blocks),
    )


def initial_weight(key: str, shape: tuple[int, ...], rng: np.random.Generator,
                   spec: BackboneSpec) -> np.ndarray | None:
    """A convolution's kernel: ``kaiming_normal_()`` (fan_in); None for what the family has no rule for."""
    return kaiming_normal(shape, "fan_in", rng) if key.endswith(".weight") and len(shape) == 4 else None


def depth_count(spec: BackboneSpec) -> int:
    """Depths of layer-wise learning-rate decay (``odir_core.training.param_groups``): one per dense block."""
    return len(spec.blocks)


def depth_of(key: str, spec: BackboneSpec) -> int:
    """The depth of a backbone key: 0 for the stem (``conv0``, ``norm0``), ``b`` for ``denseblock<b>`` and the
    ``transition<b>`` after it, one past the last block for the final ``norm5``."""
    stage = re.match(r"features\.(?:denseblock|transition)(\d+)\.", key)
    if stage:
        return int(stage.group(1))
    return depth_count(spec) + 1 if key.startswith("features.norm5.") else 0
