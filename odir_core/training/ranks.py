"""The ranks of a data-parallel run, framework-free: which process this is, and how a global batch is split
over the processes (each framework's part: ``keras_odir.data_parallel``, ``torch_odir.data_parallel``).

Every rank computes the same epoch order from the seed; each global batch of ``--batch-size`` rows is
cut into ``world`` consecutive slices, rank ``r`` taking slice ``r`` (sizes differ by at most one). So
``world`` processes see exactly the batches one process sees, and gathering the slices of a batch in
rank order gives the batch back. A training epoch leaves out a last batch of one pair (``training_rows``), on one
process and on many alike. torchrun says who is who through the environment (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``); a jax job through the variables ``keras_odir.data_parallel.jax_job`` reads.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from odir_core.errors import InputError


class DistributedError(InputError):
    """Options that cannot be split over the processes of the run (message says what to change)."""

    every_rank = True  # decided from the options and the number of processes, the same on every process


@dataclass(frozen=True)
class Ranks:
    """This process's place in the run: ``rank`` of ``world`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, env=None) -> "Ranks":
        """The ranks torchrun (or any launcher using its variables) gave this process; one process without."""
        env = os.environ if env is None else env
        world = int(env.get("WORLD_SIZE", 1))
        return cls(int(env.get("RANK", 0)), world, int(env.get("LOCAL_RANK", 0))) if world > 1 else cls()

    @property
    def main(self) -> bool:
        """Rank 0: the only process that writes files and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def log(self, log: Callable[[str], None]) -> Callable[[str], None]:
        """``log`` on rank 0, a function that prints nothing on the others."""
        return log if self.main else _quiet


def _quiet(*_args, **_kwargs) -> None:
    return None


def rank_slice(size: int, rank: int, world: int) -> slice:
    """The rows of a global batch of ``size`` rows that ``rank`` of ``world`` takes (consecutive, sizes
    differing by at most one, larger ones first, as ``np.array_split``)."""
    base, extra = divmod(int(size), int(world))
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


def rank_rows(size: int, rank: int, world: int) -> int:
    """How many rows of a global batch of ``size`` rows ``rank`` of ``world`` takes."""
    part = rank_slice(size, rank, world)
    return part.stop - part.start


def rank_batch(rows: np.ndarray, start: int, ranks: Ranks) -> tuple[np.ndarray, int]:
    """This rank's part of the global batch ``rows`` that starts at position ``start`` of the epoch, and the
    epoch position of its first row (augmentation draws are keyed by it, so they match one process's)."""
    part = rank_slice(len(rows), ranks.rank, ranks.world)
    return rows[part], start + part.start


def loss_share(local: int, size: int, world: int) -> float:
    """Factor on a rank's mean loss over ``local`` of the ``size`` rows of a global batch, so that the mean
    of the ranks' gradients (what data-parallel all-reduce computes) is the gradient of the global batch's
    mean loss also when the slices differ in size."""
    return local * world / size


def interleave(parts: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """Rows in global batch order from every rank's per-batch outputs: ``parts[r][b]`` is rank ``r``'s slice
    of batch ``b``; the result is batch 0 of rank 0, 1, ..., then batch 1, ..."""
    batches = max(len(p) for p in parts)
    rows = [p[b] for b in range(batches) for p in parts if b < len(p) and len(p[b])]
    return np.concatenate(rows)


def interleave_rows(parts: Sequence[np.ndarray], batch_sizes: Sequence[int]) -> np.ndarray:
    """``interleave`` for ranks that return their rows of every batch in one array: ``parts[r]`` holds rank
    ``r``'s slices of global batches of ``batch_sizes`` rows, one after the other."""
    world = len(parts)
    split = []
    for rank, part in enumerate(parts):
        sizes = [rank_rows(size, rank, world) for size in batch_sizes]
        split.append(np.split(np.asarray(part), np.cumsum(sizes)[:-1]))
    return interleave(split)


def batch_sizes(rows: int, batch_size: int) -> list[int]:
    """Sizes of the global batches of ``rows`` rows (the last one may be smaller)."""
    return [min(batch_size, rows - start) for start in range(0, rows, batch_size)]


def training_rows(rows: int, batch_size: int) -> int:
    """How many of an epoch's ``rows`` training takes: all but a last batch of one pair, which BatchNorm in
    training mode cannot normalise (torch refuses it); the epoch's order puts another patient there each epoch.
    With ``batch_size`` 1 every batch is kept."""
    return rows - 1 if batch_size > 1 and rows % batch_size == 1 else rows


def check_batch_split(rows: int, batch_size: int, world: int) -> None:
    """Refuse, with one line, a split of the ``rows`` training patients in which some rank would get no row
    of a batch (a last batch of one pair is not trained on: ``training_rows``)."""
    if world <= 1:
        return
    sizes = batch_sizes(training_rows(rows, batch_size), batch_size)
    smallest = min(sizes, default=rows)
    if smallest < world:
        raise DistributedError(
            f"--batch-size {batch_size} over {world} processes: a training batch of {smallest} patient(s) "
            f"({rows} in all) leaves a process without any; choose a batch size whose batches, the last "
            f"one too, hold at least {world} patients"
        )
