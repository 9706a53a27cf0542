"""One epoch's numbers from the trainers' outputs, the same for both trainers: the validation loss and the study's
and the challenge's metrics of logits (numpy, float64), and the epoch's history record (loss, metrics, lr,
momentum; keyed as the rows of :mod:`odir_core.metric_table`)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np

from odir_core.metric_table import SCORES
from odir_core.scores import SCORE_SETS, MetricsWarning
from odir_core.training.losses import bce_with_logits


def sigmoid(logits) -> np.ndarray:
    """Numerically stable logistic function, float64."""
    x = np.asarray(logits, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -x))


def split_metrics(split: str, y_true, logits) -> dict[str, float]:
    """The study's and the challenge's metrics of one split's logits, keys ``<split>_<metric>``
    (the scores of odir_core.metric_table, in its order).

    Labels absent from a small split make some scores undefined; those are averaged out
    (odir_core.scores) without a warning per epoch.
    """
    prob = sigmoid(logits)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricsWarning)
        sets = {name: SCORE_SETS[name](y_true, prob) for name in dict.fromkeys(m.source for m in SCORES)}
    return {m.column(split): sets[m.source][m.score] for m in SCORES}


def epoch_record(train_loss: float, outputs: Callable[[], tuple[np.ndarray, np.ndarray, np.ndarray]],
                 y_val: np.ndarray, lr: float | None, momentum: float | None,
                 val_loss: Callable[[np.ndarray, np.ndarray], float] = bce_with_logits) -> dict[str, float]:
    """The history record of an epoch whose mean training loss is ``train_loss``, keyed as the rows of
    odir_core.metric_table. ``val_loss(logits, targets)``: the validation loss, the training loss without the
    class weights (``odir_core.training.losses.numpy_loss(config)``; default the unweighted BCE).

    ``outputs() -> (y_train, train_logits, val_logits)`` is called only when the loss is finite. A
    non-finite loss or non-finite logits give ``val_loss`` NaN and no metrics: the run has diverged
    (see :func:`diverged`).
    """
    record = {"train_loss": float(train_loss)}
    finite = math.isfinite(record["train_loss"])
    if finite:
        y_train, train_logits, val_logits = outputs()
        finite = bool(np.isfinite(train_logits).all() and np.isfinite(val_logits).all())
    if finite:
        record.update(split_metrics("train", y_train, train_logits))
        record["val_loss"] = float(val_loss(val_logits, y_val))
        record.update(split_metrics("val", y_val, val_logits))
    else:
        record["val_loss"] = math.nan
    record.update(lr=lr, momentum=momentum)
    return record


def diverged(record: dict[str, float]) -> bool:
    """Whether the epoch of ``record`` ended with a NaN or infinite loss or outputs."""
    return not math.isfinite(record["val_loss"])
