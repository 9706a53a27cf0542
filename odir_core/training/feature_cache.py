"""Backbone features computed once per image (frozen backbone, no augmentation), for both trainers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from odir_core.data.dataset import DualEyeDataset

MESSAGE = "Frozen backbone and no augmentation: computing backbone features once per image"


@dataclass
class FeatureCache:
    """Features (n, 2 x backbone width) of the training and validation patients, in row order."""

    train: np.ndarray
    val: np.ndarray


def build_feature_cache(extract: Callable[[DualEyeDataset, str], np.ndarray], train: DualEyeDataset,
                        val: DualEyeDataset, log: Callable[[str], None] = print) -> FeatureCache:
    """``extract(dataset, description)`` -> the float32 features of every row of ``dataset``, in order."""
    log(MESSAGE)
    return FeatureCache(np.asarray(extract(train, "features train")), np.asarray(extract(val, "features val")))


class FeatureBatch:
    """Batch builder over precomputed features: ``(features (b, width), labels (b, 8))`` for rows ``indices``."""

    def __init__(self, features: np.ndarray, labels: np.ndarray):
        self.features = features
        self.labels = labels

    def __len__(self) -> int:
        return len(self.labels)

    def __call__(self, indices, epoch: int = 0, start: int = 0):
        indices = np.asarray(indices, dtype=np.int64)
        return self.features[indices], self.labels[indices]
