"""The ConvNeXt family (torchvision's ``convnext_*``): its spec, torch key layout and initialisation."""

from __future__ import annotations

import numpy as np

from odir_core.model.backbone import BackboneSpec
from odir_core.model.torch_init import trunc_normal

NAME = "convnext"
LAYER_SCALE = 1e-6  # each block's initial layer_scale (torchvision's default)
WEIGHT_STD = 0.02  # torchvision's trunc_normal_ std for every Conv2d and Linear


def state_keys(blocks: tuple[int, ...]) -> frozenset[str]:
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


def backbone(name: str, blocks: tuple[int, ...], widths: tuple[int, ...], stochastic_depth: float,
             checkpoints: dict[str, str]) -> BackboneSpec:
    """torchvision's ``name``: ``blocks`` per stage of ``widths`` channels."""
    return BackboneSpec(
        name=name, family=NAME, features=widths[-1], torchvision=name, classifier="classifier.2",
        imagenet_checkpoints=checkpoints, gradcam_stage=f"features.{2 * len(blocks) - 1}",
        earlier_stages=tuple(f"features.{2 * i + 1}" for i in range(len(blocks) - 1)), blocks=blocks,
        widths=widths, stochastic_depth=stochastic_depth, map_norm="classifier.0", state_keys=state_keys(blocks),
    )


def initial_weight(key: str, shape: tuple[int, ...], rng: np.random.Generator,
                   spec: BackboneSpec) -> np.ndarray | None:
    """``layer_scale``: LAYER_SCALE; a Conv2d's or Linear's weight: ``trunc_normal_(std=0.02)``, whose +-2 bounds
    never bind at that std; None for what the family has no rule for."""
    if key.endswith("layer_scale"):
        return np.full(shape, LAYER_SCALE)
    return trunc_normal(shape, WEIGHT_STD, rng) if key.endswith(".weight") and len(shape) in (2, 4) else None


def depth_count(spec: BackboneSpec) -> int:
    """Depths of layer-wise learning-rate decay (``odir_core.training.param_groups``): one per stage."""
    return len(spec.blocks)


def depth_of(key: str, spec: BackboneSpec) -> int:
    """The depth of a backbone key: 0 for the stem (``features.0``), ``s`` for stage ``s``'s blocks
    (``features.<2s - 1>``) and the downsampling before it (``features.<2s - 2>``), one past the last stage for
    the final LayerNorm (``classifier.0``)."""
    if key.startswith("classifier."):
        return depth_count(spec) + 1
    index = int(key.split(".")[1])
    return (index + 2) // 2 if index else 0
