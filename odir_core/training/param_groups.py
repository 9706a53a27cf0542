"""Per-parameter learning-rate scales and weight-decay exemptions, framework-free: both trainers group their
trained weights by these rules, read from the torch state_dict key of each weight (``backbone.*`` / ``head.*``,
the names ``keras_odir.weights.weight_table`` gives the Keras variables too).

Layer-wise learning-rate decay (Bao et al., BEiT, ICLR 2022; RETFound's fine-tuning, Zhou et al., Nature 2023):
with ``S`` depths in the backbone (``depth_count`` of its family: a ViT's encoder blocks, a CNN's stages), a
weight at depth ``d`` (0: the stem / patch embedding, 1..S, S + 1: what follows the last depth, and the head)
trains with ``lr * decay ** (S + 1 - d)``; ``decay`` 1 gives every weight the learning rate itself.

Weight-decay exemptions (that recipe's ``param_groups_lrd``): one-dimensional weights (biases, norm scales and
offsets, ConvNeXt's layer scales) and a ViT's class token and position embeddings get no weight decay.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from odir_core.model.backbone import BackboneSpec
from odir_core.model.families import FAMILIES, vit

# a ViT's class token and position embeddings, in each of its key layouts (torchvision's, timm's)
NO_DECAY_KEYS = tuple(f"backbone.{key}" for keys in vit.TOKEN_KEYS.values() for key in keys)


@dataclass(frozen=True)
class ParamGroup:
    """Weights trained alike: their keys, learning-rate scale and whether weight decay applies to them."""

    keys: tuple[str, ...]
    lr_scale: float
    decay: bool


def depth(key: str, spec: BackboneSpec) -> int:
    """The layer-decay depth of a dual-model key: the family's ``depth_of`` for ``backbone.*``, S + 1 for the
    head."""
    if key.startswith("backbone."):
        return FAMILIES[spec.family].depth_of(key[len("backbone."):], spec)
    if key.startswith("head."):
        return FAMILIES[spec.family].depth_count(spec) + 1
    raise ValueError(f"{key!r} is not a dual-model key (backbone.* or head.*)")


def lr_scale(key: str, spec: BackboneSpec, layer_decay: float) -> float:
    """The learning-rate factor of ``key``: ``layer_decay ** (S + 1 - depth)``."""
    top = FAMILIES[spec.family].depth_count(spec) + 1
    return float(layer_decay) ** (top - depth(key, spec))


def decays(key: str, shape: tuple[int, ...]) -> bool:
    """Whether weight decay applies to the weight ``key`` of ``shape`` (not to 1-D weights, class token and
    position embeddings)."""
    return len(shape) > 1 and key not in NO_DECAY_KEYS


def param_groups(weights: Iterable[tuple[str, tuple[int, ...]]], spec: BackboneSpec, layer_decay: float,
                 exempt: bool) -> list[ParamGroup]:
    """The (key, shape) ``weights`` grouped by learning-rate scale and, when ``exempt``, by :func:`decays`
    (else every weight decays); groups in order of decreasing scale (the head's, scale 1, first), keys in the
    given order."""
    found: dict[tuple[float, bool], list[str]] = {}
    for key, shape in weights:
        found.setdefault((lr_scale(key, spec, layer_decay), decays(key, shape) if exempt else True), []).append(key)
    order = sorted(found, key=lambda group: (-group[0], not group[1]))
    return [ParamGroup(tuple(found[group]), *group) for group in order]
