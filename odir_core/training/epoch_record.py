"""One epoch's record (loss, the study's and challenge's metrics, lr, momentum), the same for both trainers."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from odir_core.training.history import bce_with_logits, split_metrics


def epoch_record(train_loss: float, outputs: Callable[[], tuple[np.ndarray, np.ndarray, np.ndarray]],
                 y_val: np.ndarray, lr: float | None, momentum: float | None) -> dict[str, float]:
    """The history record of an epoch whose mean training loss is ``train_loss``, keyed as the rows of
    odir_core.metric_table.

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
        record["val_loss"] = bce_with_logits(val_logits, y_val)
        record.update(split_metrics("val", y_val, val_logits))
    else:
        record["val_loss"] = math.nan
    record.update(lr=lr, momentum=momentum)
    return record


def diverged(record: dict[str, float]) -> bool:
    """Whether the epoch of ``record`` ended with a NaN or infinite loss or outputs."""
    return not math.isfinite(record["val_loss"])
