"""Framework-free core of keras-odir: data, preprocessing, augmentation, sampling, metrics.

Nothing in this package imports keras or torch.
"""

from odir_core.labels import LABEL_NAMES, LABELS, NUM_LABELS

__all__ = ["LABELS", "LABEL_NAMES", "NUM_LABELS"]
