"""Keras input pipeline: ``keras.utils.PyDataset`` over ``odir_core.dataset`` (no torch or tf data code).

Batches are ``({"left": (b, s, s, 3), "right": ...}, labels (b, 8))``, float32 NHWC; the
epoch's sample order comes from ``odir_core.dataset.EpochOrder`` so it is the same in
``torch_odir`` and after a resume.
"""

from __future__ import annotations

import numpy as np
import keras

from odir_core.dataset import DualEyeDataset, EpochOrder


class EpochBatches(keras.utils.PyDataset):
    """Batches of one split for epochs ``start_epoch .. epochs-1``, one after the other.

    Batch ``i`` belongs to epoch ``start_epoch + i // steps_per_epoch``: the epoch is part of
    the index, not state, so worker processes and prefetching across epoch ends always build
    the right batch. Fit with ``steps_per_epoch=dataset.steps_per_epoch`` and ``shuffle=False``.
    ``make_batch(indices, epoch, start) -> (inputs, labels)`` builds a batch from dataset rows;
    ``shuffle``/``balanced`` choose the order (seeded permutation / balanced sampler on ``labels``).
    """

    def __init__(
        self,
        make_batch,
        labels: np.ndarray,
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = False,
        balanced: bool = False,
        start_epoch: int = 0,
        epochs: int = 1,
        workers: int = 1,
        use_multiprocessing: bool = False,
        max_queue_size: int = 10,
    ):
        super().__init__(workers=workers, use_multiprocessing=use_multiprocessing, max_queue_size=max_queue_size)
        self.make_batch = make_batch
        self.labels = labels
        self.batch_size = int(batch_size)
        self.seed = seed
        self.shuffle = shuffle
        self.balanced = balanced
        self.start_epoch = int(start_epoch)
        self.epochs = int(epochs)
        self.steps_per_epoch = -(-len(labels) // self.batch_size)
        self.order = EpochOrder(len(labels), seed, shuffle=shuffle, labels=labels if balanced else None)

    def __len__(self) -> int:
        return self.steps_per_epoch * max(0, self.epochs - self.start_epoch)

    def __getitem__(self, index: int):
        epoch, step = divmod(int(index), self.steps_per_epoch)
        epoch += self.start_epoch
        start = step * self.batch_size
        return self.make_batch(self.order(epoch)[start : start + self.batch_size], epoch, start)


def image_batches(dataset: DualEyeDataset, batch_size: int, *, seed: int = 0, shuffle: bool = False,
                  balanced: bool = False, start_epoch: int = 0, epochs: int = 1, workers: int = 0) -> EpochBatches:
    """PyDataset of image pairs; ``workers`` > 0 loads batches in that many processes."""
    return EpochBatches(
        dataset.batch, dataset.labels, batch_size, seed=seed, shuffle=shuffle, balanced=balanced,
        start_epoch=start_epoch, epochs=epochs, workers=max(1, workers), use_multiprocessing=workers > 0,
    )


class FeatureBatch:
    """Batch builder over precomputed backbone features: ``(features (b, 2 x backbone width), labels)``."""

    def __init__(self, features: np.ndarray, labels: np.ndarray):
        self.features = features
        self.labels = labels

    def __call__(self, indices, epoch: int = 0, start: int = 0):
        indices = np.asarray(indices, dtype=np.int64)
        return self.features[indices], self.labels[indices]


def feature_batches(features: np.ndarray, labels: np.ndarray, batch_size: int, *, seed: int = 0,
                    shuffle: bool = False, balanced: bool = False, start_epoch: int = 0,
                    epochs: int = 1) -> EpochBatches:
    """PyDataset over cached features with the same epoch order as ``image_batches``."""
    return EpochBatches(FeatureBatch(features, labels), labels, batch_size, seed=seed, shuffle=shuffle,
                        balanced=balanced, start_epoch=start_epoch, epochs=epochs)
