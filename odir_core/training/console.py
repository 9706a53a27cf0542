"""The console lines of a training run, the same in ``keras_odir.train`` and ``torch_odir.train``.

Epochs are numbered from 1, as in ``history.csv`` and the TensorBoard steps. One line per epoch::

    Epoch 3/8  loss 0.4123 | val loss 0.3901 kappa 0.123 F1 0.457 AUC 0.789 final 0.456 challenge final 0.612 | lr 0.0081 momentum 0.9

``loss`` is the training loss (``train_loss`` in ``history.csv``); the ``val`` group shows the
validation columns ``val_loss``, ``val_kappa``, ``val_f1``, ``val_auc``, ``val_final_score`` and
``val_challenge_final``; then ``lr`` and ``momentum``. Absent values (a diverged epoch has no
metrics) are left out; the training metrics are in ``history.csv`` and TensorBoard.
"""

from __future__ import annotations

import math

# (group name, ((history key, shown name, format), ...)) of the epoch line, in order
EPOCH_GROUPS = (
    ("", (("train_loss", "loss", ".4f"),)),
    ("val", (("val_loss", "loss", ".4f"), ("val_kappa", "kappa", ".3f"), ("val_f1", "F1", ".3f"),
             ("val_auc", "AUC", ".3f"), ("val_final_score", "final", ".3f"),
             ("val_challenge_final", "challenge final", ".3f"))),
    ("", (("lr", "lr", ".3g"), ("momentum", "momentum", ".3g"))),
)


def _value(value, fmt: str) -> str:
    value = float(value)
    return "nan" if math.isnan(value) else format(value, fmt)


def epoch_line(epoch: int, epochs: int, record: dict[str, float]) -> str:
    """One compact line for epoch ``epoch`` (1-based) of ``epochs``, from its history record."""
    groups = []
    for group, fields in EPOCH_GROUPS:
        parts = [f"{name} {_value(record[key], fmt)}" for key, name, fmt in fields if record.get(key) is not None]
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
