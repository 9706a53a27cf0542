"""Keras input pipeline: ``keras.utils.PyDataset`` over ``odir_core.data.dataset`` (no torch or tf data code).

Batches are ``({"left": (b, s, s, 3), "right": ...}, labels (b, 8))``, float32 NHWC; the
epoch's sample order comes from ``odir_core.data.dataset.EpochOrder`` so it is the same in
``torch_odir`` and after a resume.
"""

from __future__ import annotations

import numpy as np
import keras

from odir_core.data.dataset import DualEyeDataset, EpochOrder
from odir_core.training.feature_cache import FeatureBatch
from odir_core.training.ranks import Ranks, batch_sizes, loss_share, rank_batch, rank_rows, training_rows


class EpochBatches(keras.utils.PyDataset):
    """Batches of one split for epochs ``start_epoch .. epochs-1``, one after the other.

    Batch ``i`` belongs to epoch ``start_epoch + i // steps_per_epoch``: the epoch is part of
    the index, not state, so worker processes and prefetching across epoch ends always build
    the right batch. Fit with ``steps_per_epoch=dataset.steps_per_epoch`` and ``shuffle=False``.
    ``make_batch(indices, epoch, start) -> (inputs, labels)`` builds a batch from dataset rows;
    ``shuffle``/``balanced`` choose the order (seeded permutation / balanced sampler on ``labels``).
    Under several processes (``ranks``) each batch is this rank's slice of the global batch, with a
    per-row weight (``odir_core.training.ranks.loss_share``) that makes the mean of the ranks' gradients the
    global batch's; a short last batch that leaves this rank no row is not part of it (evaluation only).
    ``training``: the batches trained on, without a last batch of one pair (``odir_core.training.ranks.training_rows``).
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
        ranks: Ranks = Ranks(),
        training: bool = False,
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
        self.ranks = ranks
        rows = training_rows(len(labels), self.batch_size) if training else len(labels)
        self.sizes = batch_sizes(rows, self.batch_size)
        self.steps_per_epoch = sum(1 for size in self.sizes if rank_rows(size, ranks.rank, ranks.world))
        self.order = EpochOrder(len(labels), seed, shuffle=shuffle, labels=labels if balanced else None)

    def __len__(self) -> int:
        return self.steps_per_epoch * max(0, self.epochs - self.start_epoch)

    def __getitem__(self, index: int):
        epoch, step = divmod(int(index), self.steps_per_epoch)
        epoch += self.start_epoch
        start = step * self.batch_size
        rows = self.order(epoch)[start : start + self.batch_size]
        if not self.ranks.distributed:
            return self.make_batch(rows, epoch, start)
        part, first = rank_batch(rows, start, self.ranks)
        x, y = self.make_batch(part, epoch, first)
        return x, y, np.full(len(part), loss_share(len(part), len(rows), self.ranks.world), dtype=np.float32)


def image_batches(dataset: DualEyeDataset, batch_size: int, *, seed: int = 0, shuffle: bool = False,
                  balanced: bool = False, start_epoch: int = 0, epochs: int = 1, workers: int = 0,
                  ranks: Ranks = Ranks(), training: bool = False) -> EpochBatches:
    """PyDataset of image pairs; ``workers`` > 0 loads batches in that many processes."""
    return EpochBatches(
        dataset.batch, dataset.labels, batch_size, seed=seed, shuffle=shuffle, balanced=balanced,
        start_epoch=start_epoch, epochs=epochs, workers=max(1, workers), use_multiprocessing=workers > 0,
        ranks=ranks, training=training,
    )


def feature_batches(features: np.ndarray, labels: np.ndarray, batch_size: int, *, seed: int = 0,
                    shuffle: bool = False, balanced: bool = False, start_epoch: int = 0,
                    epochs: int = 1, ranks: Ranks = Ranks(), training: bool = False) -> EpochBatches:
    """PyDataset over cached features with the same epoch order as ``image_batches``."""
    return EpochBatches(FeatureBatch(features, labels), labels, batch_size, seed=seed, shuffle=shuffle,
                        balanced=balanced, start_epoch=start_epoch, epochs=epochs, ranks=ranks,
                        training=training)
