"""Early stopping on the validation loss, the same rules for both trainers (Keras ``EarlyStopping``'s)."""

from __future__ import annotations

import numpy as np


def early_stopping_state(val_losses) -> tuple[float, int, int | None]:
    """(best loss, epochs waited since it, best epoch) after ``val_losses``; Keras EarlyStopping rules
    (strictly lower counts as an improvement)."""
    best, wait, best_epoch = np.inf, 0, None
    for epoch, loss in enumerate(val_losses):
        if loss < best:
            best, wait, best_epoch = float(loss), 0, epoch
        else:
            wait += 1
    return best, wait, best_epoch


def should_stop(wait: int, patience: int) -> bool:
    """Early stopping decision after an epoch: ``patience`` epochs without improvement."""
    return patience > 0 and wait >= patience
