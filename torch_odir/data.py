"""PyTorch input pipeline over ``odir_core.dataset``: a Dataset of (left, right, labels), NCHW float32,
and a DataLoader whose batches follow the shared epoch order (seeded shuffle or balanced sampler)."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from odir_core.dataset import DualEyeDataset, EpochOrder, batch_slices


class PairDataset(Dataset):
    """Items are keyed ``(row, epoch, position)`` so augmentation draws match keras_odir's."""

    def __init__(self, data: DualEyeDataset):
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, key):
        index, epoch, position = key
        left, right = self.data.pair(index, epoch, position)
        return (
            torch.from_numpy(np.ascontiguousarray(left.transpose(2, 0, 1))),
            torch.from_numpy(np.ascontiguousarray(right.transpose(2, 0, 1))),
            torch.from_numpy(self.data.labels[index]),
        )


class EpochBatchSampler(Sampler):
    """Batches of ``(row, epoch, position)`` keys in the epoch's order; call ``set_epoch`` before each epoch."""

    def __init__(self, order: EpochOrder, batch_size: int):
        self.order = order
        self.batch_size = int(batch_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return -(-self.order.n // self.batch_size)

    def __iter__(self):
        rows = self.order(self.epoch)
        for start, part in zip(range(0, len(rows), self.batch_size), batch_slices(rows, self.batch_size)):
            yield [(int(i), self.epoch, start + k) for k, i in enumerate(part)]


def make_loader(data: DualEyeDataset, batch_size: int, *, seed: int = 0, shuffle: bool = False,
                balanced: bool = False, workers: int = 0) -> DataLoader:
    """DataLoader over ``data``; its ``batch_sampler.set_epoch(e)`` selects the epoch's order and draws."""
    order = EpochOrder(len(data), seed, shuffle=shuffle, labels=data.labels if balanced else None)
    return DataLoader(PairDataset(data), batch_sampler=EpochBatchSampler(order, batch_size),
                      num_workers=workers, persistent_workers=workers > 0)
