"""A small ground truth and a submission of the same patients, as the label files hold them (ID,N..O)."""

import numpy as np
import pandas as pd

from odir_core.labels import LABELS


def label_frames(n=6, seed=1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(ground truth of 0/1 labels, probabilities), n (at most six) patients whose IDs are not in order."""
    rng = np.random.default_rng(seed)
    ids = [10, 3, 7, 42, 5, 8][:n]
    gt = pd.DataFrame((rng.random((n, 8)) < 0.4).astype(int), columns=list(LABELS))
    gt.insert(0, "ID", ids)
    sub = pd.DataFrame(rng.random((n, 8)), columns=list(LABELS))
    sub.insert(0, "ID", ids)
    return gt, sub
