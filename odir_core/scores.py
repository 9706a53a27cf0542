"""ODIR-5K scores: the study's metrics, the official ODIR-2019 metrics, the per-label table and report text.

Two metric sets, each ``dict(kappa, f1, auc, final)`` with ``final`` the mean of the three:

* :func:`study_metrics` -- the original study's validation metrics: mean over labels of each
  label's Cohen kappa, F1 with ``average='weighted'`` and ROC AUC with ``average='weighted'``.
* :func:`challenge_metrics` -- the ODIR-2019 challenge's official evaluation
  (``ODIR_evaluation.py`` by Shanggong Medical Technology, July 2019, function ``ODIR_Metrics``)::

      gt = gt_data.flatten(); pr = pr_data.flatten()
      kappa = metrics.cohen_kappa_score(gt, pr > th)
      f1 = metrics.f1_score(gt, pr > th, average='micro')
      auc = metrics.roc_auc_score(gt, pr)
      final_score = (kappa + f1 + auc) / 3.0      # th = 0.5

A probability counts as positive when it is strictly above the threshold (``pr > th``), as in the
official script; both metric sets use this rule. Reading label files and the official submission
check are :mod:`odir_core.evaluation.submission`; the command ``python -m odir_core.metrics`` is
:mod:`odir_core.evaluation.metrics_cli`.

Degenerate input. Bad arrays (shape mismatch, labels not 0/1, NaN/inf or out-of-[0, 1]
probabilities, no rows) raise :class:`MetricsError` naming what is wrong and where. A score that is
mathematically undefined for a label -- ROC AUC when that label's ground truth has one class only,
Cohen kappa when truth and prediction are both constant -- is NaN for that label, a
:class:`MetricsWarning` names the labels, and averages over labels are taken over the labels where
the score is defined (NaN if there is none). ``final`` is NaN when one of its parts is NaN.
"""

from __future__ import annotations

import math
import sys
import warnings

import numpy as np
import pandas as pd
from sklearn.metrics import (
    cohen_kappa_score,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from odir_core.errors import InputError
from odir_core.labels import LABELS, NUM_LABELS

AVERAGE_ROWS = ("micro avg", "macro avg", "weighted avg")


class MetricsError(InputError):
    """Ground truth or probabilities that cannot be scored."""


class MetricsWarning(UserWarning):
    """A score that is undefined for some labels and was set to NaN."""


# ---------------------------------------------------------------------------------------------
# input validation
# ---------------------------------------------------------------------------------------------


def _as_matrix(values, what: str) -> np.ndarray:
    """(n, 8) float64 array from an array-like or a DataFrame holding the label columns."""
    if isinstance(values, pd.DataFrame) and set(LABELS) <= set(values.columns):
        values = values[list(LABELS)]
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise MetricsError(f"{what} is not numeric: {exc}") from None
    if arr.ndim != 2 or arr.shape[1] != NUM_LABELS:
        raise MetricsError(f"{what} must have shape (n, {NUM_LABELS}) in label order {''.join(LABELS)}, got {arr.shape}")
    if arr.shape[0] == 0:
        raise MetricsError(f"{what} has no rows")
    return arr


def name_cells(mask: np.ndarray, limit: int = 5, first_row: int = 0) -> str:
    """'row 3 column D, row 10 column O, ...' for the first True cells of an (n, 8) mask."""
    rows, cols = np.nonzero(mask)
    cells = [f"row {r + first_row} column {LABELS[c]}" for r, c in zip(rows[:limit], cols[:limit])]
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return ", ".join(cells) + more


def _validate(y_true, y_prob) -> tuple[np.ndarray, np.ndarray]:
    """Checked (y_true int64, y_prob float64), both (n, 8); raises MetricsError otherwise."""
    yt = _as_matrix(y_true, "y_true")
    yp = _as_matrix(y_prob, "y_prob")
    if yt.shape != yp.shape:
        raise MetricsError(f"y_true has shape {yt.shape} but y_prob has shape {yp.shape}; they must match row for row")
    bad = ~np.isin(yt, (0.0, 1.0))
    if bad.any():
        raise MetricsError(f"y_true must hold only 0 and 1; {int(bad.sum())} other value(s) at {name_cells(bad)}")
    bad = ~np.isfinite(yp)
    if bad.any():
        raise MetricsError(f"y_prob has {int(bad.sum())} NaN/inf value(s) at {name_cells(bad)}; fix the model output before scoring")
    bad = (yp < 0.0) | (yp > 1.0)
    if bad.any():
        raise MetricsError(
            f"y_prob must be probabilities in [0, 1]; {int(bad.sum())} value(s) outside at {name_cells(bad)}"
            " (apply a sigmoid to logits first)"
        )
    return yt.astype(np.int64), yp


def _thresholds(threshold) -> np.ndarray:
    """(8,) thresholds from a scalar or a per-label sequence, each in [0, 1]."""
    try:
        t = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (NUM_LABELS,))
    except ValueError:
        raise MetricsError(f"threshold must be a number or {NUM_LABELS} numbers (one per label), got {threshold!r}") from None
    if not np.all((t >= 0.0) & (t <= 1.0)):
        raise MetricsError(f"threshold must lie in [0, 1], got {t.tolist()}")
    return t


def binarize(y_prob, threshold=0.5) -> np.ndarray:
    """0/1 int64 predictions: probability strictly above the (scalar or per-label) threshold."""
    return (np.asarray(y_prob, dtype=np.float64) > _thresholds(threshold)).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# scores
# ---------------------------------------------------------------------------------------------


def _warn_undefined(score: str, labels: list[str], reason: str) -> None:
    """A MetricsWarning attributed to the first caller outside this module (whichever function was called)."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame, level = frame.f_back, level + 1
    warnings.warn(f"{score} is undefined for label(s) {', '.join(labels)} ({reason}); set to NaN", MetricsWarning,
                  stacklevel=level)


def _kappa(t: np.ndarray, p: np.ndarray) -> float:
    """Cohen kappa, NaN (without sklearn's own warning) when truth and prediction are both constant."""
    if np.unique(t).size == 1 and np.unique(p).size == 1:
        return math.nan
    return float(cohen_kappa_score(t, p))


def per_label_kappa(y_true, y_prob, threshold=0.5) -> np.ndarray:
    """(8,) Cohen kappa of each label at the threshold; NaN (with a MetricsWarning) where undefined."""
    yt, yp = _validate(y_true, y_prob)
    pred = binarize(yp, threshold)
    kappas = np.array([_kappa(yt[:, j], pred[:, j]) for j in range(NUM_LABELS)])
    undefined = [LABELS[j] for j in np.flatnonzero(np.isnan(kappas))]
    if undefined:
        _warn_undefined("Cohen kappa", undefined, "ground truth and prediction both constant")
    return kappas


def per_label_auc(y_true, y_prob) -> np.ndarray:
    """(8,) ROC AUC of each label; NaN (with a MetricsWarning) where the truth has one class only."""
    yt, yp = _validate(y_true, y_prob)
    defined = np.array([np.unique(yt[:, j]).size == 2 for j in range(NUM_LABELS)])
    aucs = np.full(NUM_LABELS, math.nan)
    for j in np.flatnonzero(defined):
        aucs[j] = roc_auc_score(yt[:, j], yp[:, j])
    if not defined.all():
        _warn_undefined("ROC AUC", [LABELS[j] for j in np.flatnonzero(~defined)], "only one class in the ground truth")
    return aucs


def _nanmean(values: np.ndarray, weights: np.ndarray | None = None) -> float:
    ok = ~np.isnan(values)
    if weights is not None:
        ok &= weights > 0
    if not ok.any():
        return math.nan
    return float(np.average(values[ok], weights=None if weights is None else weights[ok]))


def _with_final(kappa: float, f1: float, auc: float) -> dict[str, float]:
    return {"kappa": kappa, "f1": f1, "auc": auc, "final": (kappa + f1 + auc) / 3.0}


def study_metrics(y_true, y_prob, threshold=0.5) -> dict[str, float]:
    """The study's metrics: mean per-label Cohen kappa, weighted F1, weighted ROC AUC, final = their mean.

    F1 is ``f1_score(y_true, y_pred, average='weighted', zero_division=0)`` on the (n, 8) matrices
    and AUC ``roc_auc_score(y_true, y_prob, average='weighted')`` (weights = positives per label);
    a label whose AUC or kappa is undefined is left out of that average (see the module docstring).
    """
    yt, yp = _validate(y_true, y_prob)
    pred = binarize(yp, threshold)
    kappa = _nanmean(per_label_kappa(yt, yp, threshold))
    f1 = float(f1_score(yt, pred, average="weighted", zero_division=0))
    auc = _nanmean(per_label_auc(yt, yp), weights=yt.sum(axis=0).astype(np.float64))
    return _with_final(kappa, f1, auc)


def challenge_metrics(y_true, y_prob, threshold=0.5) -> dict[str, float]:
    """The official ODIR-2019 evaluation (``ODIR_Metrics``): kappa, micro F1 and ROC AUC of the flattened matrices.

    Flattening pools all 8 x n decisions into one binary problem; final = (kappa + f1 + auc) / 3.
    """
    yt, yp = _validate(y_true, y_prob)
    gt = yt.ravel()
    pr = yp.ravel()
    pred = binarize(yp, threshold).ravel()
    kappa = _kappa(gt, pred)
    if math.isnan(kappa):
        _warn_undefined("Cohen kappa", ["(all, flattened)"], "ground truth and prediction both constant")
    f1 = float(f1_score(gt, pred, average="micro"))
    if np.unique(gt).size == 2:
        auc = float(roc_auc_score(gt, pr))
    else:
        auc = math.nan
        _warn_undefined("ROC AUC", ["(all, flattened)"], "only one class in the ground truth")
    return _with_final(kappa, f1, auc)


SCORE_SETS = {"study": study_metrics, "challenge": challenge_metrics}
"""The score sets an epoch records (``odir_core.metric_table``): name -> f(y_true, y_prob) -> {score: value}."""


def per_label_table(y_true, y_prob, threshold=0.5, *, averages: bool = False) -> pd.DataFrame:
    """Per-label precision, recall, F1, ROC AUC and support (positives), index LABELS.

    Precision/recall/F1 are scikit-learn's (``zero_division=0``), as in its classification report.
    With ``averages=True`` three rows follow: "micro avg", "macro avg", "weighted avg" (support = all
    positives); their AUC is the matching average of the per-label AUCs over labels where it is defined.
    """
    yt, yp = _validate(y_true, y_prob)
    pred = binarize(yp, threshold)
    precision, recall, f1, support = precision_recall_fscore_support(yt, pred, average=None, zero_division=0)
    aucs = per_label_auc(yt, yp)
    table = pd.DataFrame(
        {"precision": precision, "recall": recall, "f1": f1, "auc": aucs, "support": support.astype(np.int64)},
        index=pd.Index(LABELS, name="label"),
    )
    if not averages:
        return table
    rows = {}
    total = int(support.sum())
    for name in AVERAGE_ROWS:
        kind = name.split()[0]
        p, r, f, _ = precision_recall_fscore_support(yt, pred, average=kind, zero_division=0)
        if kind == "micro":
            gt = yt.ravel()
            auc = float(roc_auc_score(gt, yp.ravel())) if np.unique(gt).size == 2 else math.nan
        else:
            auc = _nanmean(aucs, weights=support.astype(np.float64) if kind == "weighted" else None)
        rows[name] = {"precision": p, "recall": r, "f1": f, "auc": auc, "support": total}
    return pd.concat([table, pd.DataFrame.from_dict(rows, orient="index")])


# ---------------------------------------------------------------------------------------------
# report text
# ---------------------------------------------------------------------------------------------


def format_report(y_true, y_prob, threshold=0.5) -> str:
    """Both metric sets and the per-label table as printable text."""
    study = study_metrics(y_true, y_prob, threshold)
    challenge = challenge_metrics(y_true, y_prob, threshold)
    t = _thresholds(threshold)
    shown = f"{t[0]:g}" if np.all(t == t[0]) else ",".join(f"{v:g}" for v in t)
    lines = [
        f"threshold {shown}, {len(y_true)} patients",
        "",
        f"{'':>8}{'study':>20}{'challenge':>20}",
    ]
    for key in ("kappa", "f1", "auc", "final"):
        lines.append(f"{key:>8}{study[key]:>20.16f}{challenge[key]:>20.16f}")
    lines += [
        "",
        "study: mean per-label kappa, weighted F1, weighted ROC AUC; challenge: official ODIR-2019 (flattened, micro F1)",
        "",
    ]
    table = per_label_table(y_true, y_prob, threshold, averages=True)
    lines.append(f"{'':>12}{'precision':>10}{'recall':>10}{'f1':>10}{'auc':>10}{'support':>10}")
    for name, row in table.iterrows():
        if name == AVERAGE_ROWS[0]:
            lines.append("")
        lines.append(
            f"{name:>12}{row.precision:>10.2f}{row.recall:>10.2f}{row.f1:>10.2f}{row.auc:>10.2f}{int(row.support):>10d}"
        )
    return "\n".join(lines)
