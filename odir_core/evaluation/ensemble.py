"""Ensembles of trained models: their probabilities combined per patient and label, and each member's scores.

Members may differ in backbone, head, input size, preprocessing and framework: each one sees the
patients prepared as its own run config says, and only probabilities are combined.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from odir_core import scores
from odir_core.errors import InputError

COMBINE_RULES = ("mean", "geometric")
COMBINE_HELP = ("how several models' probabilities are combined: mean (arithmetic mean) or geometric (the normalised "
                "geometric mean, G(p) / (G(p) + G(1 - p)), which is the sigmoid of the members' mean logit)")
EPSILON = 1e-7  # probabilities are clipped to [EPSILON, 1 - EPSILON] before logarithms


def combine(members: Sequence[np.ndarray], rule: str = "mean") -> np.ndarray:
    """(n, 8) probabilities of an ensemble from its members' (n, 8) probabilities, by ``rule``."""
    if rule not in COMBINE_RULES:
        raise InputError(f"unknown ensemble rule {rule!r}; use one of {', '.join(COMBINE_RULES)}")
    probs = np.stack([np.asarray(p, dtype=np.float64) for p in members])
    if rule == "mean":
        return probs.mean(axis=0)
    p = np.clip(probs, EPSILON, 1.0 - EPSILON)
    logit = np.mean(np.log(p) - np.log1p(-p), axis=0)
    return 1.0 / (1.0 + np.exp(-logit))


def member_scores(y_true: np.ndarray, members: dict[str, np.ndarray]) -> list[dict]:
    """Each member's study and challenge scores at threshold 0.5: ``[{"model": name, "study": {...},
    "challenge": {...}}]`` (undefined scores as None)."""
    rows = []
    with warnings.catch_warnings():  # undefined scores are None here; the ensemble's report lists why
        warnings.simplefilter("ignore", scores.MetricsWarning)
        for name, y_prob in members.items():
            row = {"model": name}
            for family, fn in scores.SCORE_SETS.items():
                row[family] = {k: (None if np.isnan(v) else float(v)) for k, v in fn(y_true, y_prob).items()}
            rows.append(row)
    return rows
