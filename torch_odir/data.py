"""PyTorch input pipeline over ``odir_core.dataset``: a Dataset of (left, right, labels) and a DataLoader
whose batches follow the shared epoch order (seeded shuffle or balanced sampler). Batches are NCHW float32
in channels_last memory format (the NHWC arrays of odir_core, stacked once, seen as NCHW)."""

from __future__ import annotations

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
        return torch.from_numpy(left), torch.from_numpy(right), torch.from_numpy(self.data.labels[index])


def collate_pairs(items) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack (left HWC, right HWC, labels) items into NCHW channels_last batches with one copy each."""
    left, right, labels = zip(*items)
    return (torch.stack(left).permute(0, 3, 1, 2), torch.stack(right).permute(0, 3, 1, 2), torch.stack(labels))


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
    return DataLoader(PairDataset(data), batch_sampler=EpochBatchSampler(order, batch_size), collate_fn=collate_pairs,
                      num_workers=workers, persistent_workers=workers > 0)
