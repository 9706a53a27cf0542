"""PyTorch input pipeline over ``odir_core.data.dataset``: a Dataset of (left, right, labels) and a DataLoader
whose batches follow the shared epoch order (seeded shuffle or balanced sampler). Batches are NCHW float32
in channels_last memory format (the NHWC arrays of odir_core, stacked once, seen as NCHW)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from odir_core.data.dataset import DualEyeDataset, EpochOrder, batch_slices
from odir_core.training.feature_cache import FeatureBatch
from odir_core.training.ranks import Ranks, rank_batch, training_rows


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


class FeatureDataset(Dataset):
    """Cached backbone features and labels, keyed like ``PairDataset`` (the draws do not matter)."""

    def __init__(self, batch: FeatureBatch):
        self.batch = batch

    def __len__(self) -> int:
        return len(self.batch)

    def __getitem__(self, key):
        features, labels = self.batch([key[0]])
        return torch.from_numpy(features[0]), torch.from_numpy(labels[0])


def collate_pairs(items) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stack (left HWC, right HWC, labels) items into NCHW channels_last batches with one copy each."""
    left, right, labels = zip(*items)
    return (torch.stack(left).permute(0, 3, 1, 2), torch.stack(right).permute(0, 3, 1, 2), torch.stack(labels))


class EpochBatchSampler(Sampler):
    """Batches of ``(row, epoch, position)`` keys in the epoch's order; call ``set_epoch`` before each epoch.
    Under several processes, this rank's slice of each global batch (``odir_core.training.ranks``; an empty
    slice of a short last batch is left out). ``training``: a last batch of one pair is left out
    (``odir_core.training.ranks.training_rows``)."""

    def __init__(self, order: EpochOrder, batch_size: int, ranks: Ranks = Ranks(), training: bool = False):
        self.order = order
        self.batch_size = int(batch_size)
        self.ranks = ranks
        self.rows = training_rows(order.n, self.batch_size) if training else order.n
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return -(-self.rows // self.batch_size)

    def __iter__(self):
        rows = self.order(self.epoch)[: self.rows]
        for start, batch in zip(range(0, len(rows), self.batch_size), batch_slices(rows, self.batch_size)):
            part, first = rank_batch(batch, start, self.ranks)
            if len(part):
                yield [(int(i), self.epoch, first + k) for k, i in enumerate(part)]


def make_loader(data: DualEyeDataset | FeatureBatch, batch_size: int, *, seed: int = 0, shuffle: bool = False,
                balanced: bool = False, workers: int = 0, ranks: Ranks = Ranks(),
                training: bool = False) -> DataLoader:
    """DataLoader over image pairs (``DualEyeDataset``) or cached features (``FeatureBatch``), of this rank's
    slices of the global batches; its ``batch_sampler.set_epoch(e)`` selects the epoch's order and draws.
    ``training``: the loader trained on, without a last batch of one pair."""
    order = EpochOrder(len(data), seed, shuffle=shuffle, labels=data.labels if balanced else None)
    sampler = EpochBatchSampler(order, batch_size, ranks, training)
    if isinstance(data, FeatureBatch):
        return DataLoader(FeatureDataset(data), batch_sampler=sampler)
    return DataLoader(PairDataset(data), batch_sampler=sampler, collate_fn=collate_pairs,
                      num_workers=workers, persistent_workers=workers > 0)
