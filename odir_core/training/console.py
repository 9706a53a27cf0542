"""The console lines of a training run, the same in ``keras_odir.train`` and ``torch_odir.train``.

Epochs are numbered from 1, as in ``history.csv`` and the TensorBoard steps. One line per epoch::

    Epoch 3/8  loss 0.4123 | val loss 0.3901 kappa 0.123 F1 0.457 AUC 0.789 final 0.456 challenge final 0.612 | lr 0.0081 momentum 0.9

The fields, their labels and formats are the rows of :mod:`odir_core.metric_table` that show a
split on the console: first the training values without a group name (``loss`` is ``train_loss``),
then the ``val`` group, then the unsplit values (``lr``, ``momentum``). Absent values (a diverged
epoch has no metrics) are left out; the training metrics are in ``history.csv`` and TensorBoard.
"""

from __future__ import annotations

import math

from odir_core.metric_table import METRICS

# (split, group name) of the epoch line's groups, in order; None: the unsplit values
EPOCH_GROUPS = (("train", ""), ("val", "val"), (None, ""))


def _value(value, fmt: str) -> str:
    value = float(value)
    return "nan" if math.isnan(value) else format(value, fmt)


def epoch_line(epoch: int, epochs: int, record: dict[str, float]) -> str:
    """One compact line for epoch ``epoch`` (1-based) of ``epochs``, from its history record."""
    groups = []
    for split, group in EPOCH_GROUPS:
        fields = [(m.column(split), m) for m in METRICS if split in m.console]
        parts = [f"{m.label} {_value(record[key], m.fmt)}" for key, m in fields if record.get(key) is not None]
        if parts:
            groups.append(" ".join([group, *parts] if group else parts))
    return f"Epoch {epoch}/{epochs}  " + " | ".join(groups)


def early_stopping_line(epochs_done: int, epochs: int, patience: int) -> str | None:
    """The line saying the run stopped early after ``epochs_done`` of ``epochs`` epochs, or None when
    it ran them all (patience running out in the last scheduled epoch stops nothing)."""
    if epochs_done >= epochs:
        return None
    waited = f"{patience} epoch{'s' if patience != 1 else ''}"
    return f"Epoch {epochs_done}/{epochs}: early stopping (no lower validation loss in the last {waited})"


def duration(seconds: float) -> str:
    """A run's wall time as people read it: ``"42.3 s"`` under a minute, ``"3.4 min"`` above."""
    return f"{seconds:.1f} s" if seconds < 60 else f"{seconds / 60:.1f} min"
