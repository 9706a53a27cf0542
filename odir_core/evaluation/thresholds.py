"""Per-label decision thresholds: binarise probabilities, tune on a validation split, save/load JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.metrics import cohen_kappa_score, f1_score

from odir_core.atomic import atomic_write_text
from odir_core.errors import InputError
from odir_core.labels import LABELS, NUM_LABELS

THRESHOLD_METRICS = ("f1", "kappa")
DEFAULT_THRESHOLD = 0.5
CANDIDATES = np.round(np.arange(0.01, 1.0, 0.01), 2)
THRESHOLDS_FILE = "thresholds.json"
VALIDATION_SOURCE = "val split"  # how the "source" of thresholds tuned on a run's validation split begins


class ThresholdError(InputError):
    """A thresholds file or value that cannot be used."""


def as_thresholds(thresholds=DEFAULT_THRESHOLD) -> np.ndarray:
    """Return an (8,) float array from a scalar or a per-label sequence, checking 0 < t < 1."""
    t = np.broadcast_to(np.asarray(thresholds, dtype=np.float64), (NUM_LABELS,)).copy()
    if not np.all((t > 0) & (t < 1)):
        raise ThresholdError(f"thresholds must lie strictly between 0 and 1, got {t.tolist()}")
    return t


def _score(metric: str, y_true: np.ndarray, y_pred: np.ndarray) -> float:
    if metric == "f1":
        return f1_score(y_true, y_pred, zero_division=0)
    return cohen_kappa_score(y_true, y_pred) if len(np.unique(y_pred)) > 1 else 0.0


def tune_thresholds(y_true, y_prob, metric: str = "f1", candidates=CANDIDATES) -> np.ndarray:
    """Per label, the candidate threshold maximising that label's F1 or Cohen kappa.

    A probability strictly above the threshold counts as positive (odir_core.scores.binarize).

    Ties go to the candidate nearest 0.5; a label without positives (or negatives) keeps 0.5.
    """
    if metric not in THRESHOLD_METRICS:
        raise ThresholdError(f"unknown threshold metric {metric!r}; use one of {', '.join(THRESHOLD_METRICS)}")
    y_true = np.asarray(y_true).astype(np.int64)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    if y_true.shape != y_prob.shape or y_true.ndim != 2 or y_true.shape[1] != NUM_LABELS:
        raise ThresholdError(f"need (n, {NUM_LABELS}) labels and probabilities, got {y_true.shape} and {y_prob.shape}")
    candidates = np.asarray(candidates, dtype=np.float64)
    order = np.argsort(np.abs(candidates - DEFAULT_THRESHOLD), kind="stable")
    tuned = np.full(NUM_LABELS, DEFAULT_THRESHOLD)
    for j in range(NUM_LABELS):
        if y_true[:, j].min() == y_true[:, j].max():
            continue
        scores = np.array([_score(metric, y_true[:, j], (y_prob[:, j] > c).astype(np.int64)) for c in candidates[order]])
        tuned[j] = candidates[order][int(np.argmax(scores))]
    return tuned


def save_thresholds(path, thresholds, *, metric: str, source: str, n_patients: int) -> Path:
    """Write thresholds as JSON ({"thresholds": {label: t}, "metric", "source", "n_patients"}), atomically."""
    t = as_thresholds(thresholds)
    payload = {
        "thresholds": {label: float(v) for label, v in zip(LABELS, t)},
        "metric": metric,
        "source": source,
        "n_patients": int(n_patients),
    }
    return atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def load_thresholds(path) -> np.ndarray:
    """Read a thresholds JSON written by save_thresholds; (8,) array in LABELS order."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
        table = payload["thresholds"]
        values = [float(table[label]) for label in LABELS]
    except FileNotFoundError:
        raise ThresholdError(f"{path}: thresholds file not found") from None
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ThresholdError(
            f"{path}: not a thresholds file ({exc!r}); expected {{\"thresholds\": {{\"N\": 0.5, ..., \"O\": 0.5}}}}; "
            "recreate it with --tune-thresholds"
        ) from None
    try:
        return as_thresholds(values)
    except ThresholdError as exc:
        raise ThresholdError(f"{path}: {exc}") from None


def thresholds_origin(path) -> tuple[str, int | None]:
    """How the thresholds of a file (already read by load_thresholds) were tuned, in words, and the number of
    patients when they were a run's validation split (else None)."""
    payload = json.loads(Path(path).read_text())
    source, n = payload.get("source"), payload.get("n_patients")
    if not source:
        return "the file does not say how they were tuned", None
    text = f"per-label {payload.get('metric', '?')} tuned on {source}, {n} patients"
    return text, int(n) if str(source).startswith(VALIDATION_SOURCE) and isinstance(n, int) else None
