"""Per-label positive weights for the class-weighted losses (framework-free)."""

import numpy as np

from odir_core.labels import LABELS


def pos_weight_from_labels(y) -> np.ndarray:
    """``negatives / positives`` per label of a 0/1 label matrix ``y`` (n_samples, n_labels).

    This is the ``pos_weight`` of torch's ``BCEWithLogitsLoss`` the study used, computed on
    the training split. Returns float32 (n_labels,). A label with no positive sample has no
    finite weight: a ValueError names it.
    """
    y = np.asarray(y)
    if y.ndim != 2 or y.shape[0] == 0:
        raise ValueError(
            f"pos_weight_from_labels: need a non-empty (samples, labels) matrix, got shape {y.shape}"
        )
    if not np.isin(y, (0, 1)).all():
        raise ValueError("pos_weight_from_labels: labels must be 0 or 1")
    positives = y.sum(axis=0, dtype=np.float64)
    negatives = y.shape[0] - positives
    missing = np.flatnonzero(positives == 0)
    if missing.size:
        names = [LABELS[i] if y.shape[1] == len(LABELS) else str(i) for i in missing]
        raise ValueError(
            f"pos_weight_from_labels: label(s) {', '.join(names)} have no positive sample in "
            f"these {y.shape[0]} rows, so negatives/positives is undefined; use a larger or "
            "stratified training split, or train without the weighted loss"
        )
    return (negatives / positives).astype(np.float32)
