"""torch.nn.init's draws for weight tensors, in numpy (the families' initialisation rules use them)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def fans(shape: Sequence[int]) -> tuple[int, int]:
    """torch's ``_calculate_fan_in_and_fan_out``: (in, out) channels times the kernel's size."""
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def kaiming_normal(shape: tuple[int, ...], mode: str, rng: np.random.Generator) -> np.ndarray:
    """``kaiming_normal_(mode=mode, nonlinearity="relu")``: normal, std sqrt(2 / fan) (``fan_in`` or ``fan_out``)."""
    fan = fans(shape)[0 if mode == "fan_in" else 1]
    return rng.normal(0.0, math.sqrt(2.0 / fan), size=shape)


def trunc_normal(shape: tuple[int, ...], std: float, rng: np.random.Generator) -> np.ndarray:
    """``trunc_normal_(std=std)``: normal, cut at torch's default bounds +-2."""
    return np.clip(rng.normal(0.0, std, size=shape), -2.0, 2.0)


def xavier_uniform(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """``xavier_uniform_``: uniform in +-sqrt(6 / (fan_in + fan_out))."""
    fan_in, fan_out = fans(shape)
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-bound, bound, size=shape)
