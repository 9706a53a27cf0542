"""What the processes of a data-parallel run exchange, for both trainers: batch losses, gathered outputs,
rank 0's objects (or that computing them failed there), a shared decision. Framework-free: ``process_group``
is handed the communication module (``torch.distributed``) by the trainer and the functions use its object
collectives while the group is joined. With one process every function is the identity, so the training
loops have one code path. An exchange that fails because a process of the run has stopped raises
``LostProcess`` (one line, printed by rank 0) instead of the communication library's traceback."""

from __future__ import annotations

import contextlib
import datetime
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from odir_core.errors import EXIT_FAILURE, OdirError, exit_code_for
from odir_core.training.ranks import Ranks, interleave, interleave_rows

_dist = None  # the communication module of the joined process group


@contextlib.contextmanager
def process_group(ranks: Ranks, device: str, dist, use_device: Callable[[str], None] | None = None):
    """Join the run's process group through ``dist`` (``torch.distributed``: NCCL on a CUDA ``device``, whose
    ``use_device`` makes it current; gloo on the CPU) for the block, unless one process runs; a group the
    caller has joined already is used as it is and left joined."""
    global _dist
    if not ranks.distributed:
        yield
        return
    joined = dist.is_initialized()
    if not joined:
        cuda = device.startswith("cuda")
        if cuda and use_device is not None:
            use_device(device)
        dist.init_process_group("nccl" if cuda else "gloo", timeout=datetime.timedelta(minutes=30))
    _dist = dist
    try:
        yield
    finally:
        _dist = None
        if not joined:
            dist.destroy_process_group()


class LostProcess(OdirError):
    """An exchange with the other processes failed: one of them has stopped (torchrun's report names it) or
    stalled. Every process left meets it alike, so rank 0 alone prints it (exit 1)."""

    every_rank = True


@contextlib.contextmanager
def _exchange():
    try:
        yield
    except RuntimeError as exc:  # torch.distributed's errors (gloo, NCCL, a timeout) derive from it
        reason = re.sub(r"^\[[^\]]*\] ", "", str(exc).splitlines()[0]) if str(exc) else type(exc).__name__
        raise LostProcess(f"exchanging data with the other processes failed, one of them has stopped or "
                          f"stalled: {reason}") from None


def _everyone(value, ranks: Ranks) -> list:
    parts = [None] * ranks.world
    with _exchange():
        _dist.all_gather_object(parts, value)
    return parts


def batch_sum(loss_sum: float, rows: int, ranks: Ranks) -> tuple[float, int]:
    """(sum of per-row losses, rows) of the whole global batch, from this rank's share of it."""
    if not ranks.distributed:
        return loss_sum, rows
    parts = _everyone((float(loss_sum), int(rows)), ranks)
    return sum(p[0] for p in parts), sum(p[1] for p in parts)


def gather_batches(batches: list[np.ndarray], ranks: Ranks) -> np.ndarray:
    """Every rank's per-batch outputs, back in global order (``odir_core.training.ranks.interleave``), on every
    rank (so that all of them take the same decisions from the metrics)."""
    if not ranks.distributed:
        return np.concatenate(batches)
    return interleave(_everyone(batches, ranks))


def gather_rows(local: np.ndarray, batch_sizes: list[int], ranks: Ranks) -> np.ndarray:
    """``gather_batches`` for this rank's rows of every global batch (of ``batch_sizes`` rows) in one array."""
    if not ranks.distributed:
        return local
    return interleave_rows(_everyone(np.asarray(local), ranks), batch_sizes)


def from_main(value, ranks: Ranks):
    """Rank 0's ``value`` on every rank; rank 0 keeps its own object (a copy, as some engines return, would lose
    what is not sent, such as the lock a run setup holds)."""
    if not ranks.distributed:
        return value
    box = [value]
    with _exchange():
        _dist.broadcast_object_list(box, src=0)
    return value if ranks.main else box[0]


class MainFailed(OdirError):
    """What rank 0 computes for every rank (``on_main``) failed there: the other ranks stop with its exit code and
    print nothing, rank 0 prints the error."""

    every_rank = True

    def __init__(self, exit_code: int):
        super().__init__(f"rank 0 failed (exit code {exit_code})")
        self.exit_code = exit_code


@dataclass(frozen=True)
class _Failed:
    exit_code: int


def on_main(compute: Callable[[], object], ranks: Ranks):
    """Rank 0's ``compute()`` on every rank (the others do not call it). An error it raises on rank 0 is raised
    there, and the other ranks raise ``MainFailed`` with its exit code instead of waiting for a value."""
    if not ranks.distributed:
        return compute()
    if not ranks.main:
        value = from_main(None, ranks)
        if isinstance(value, _Failed):
            raise MainFailed(value.exit_code)
        return value
    try:
        value = compute()
    except Exception as exc:
        from_main(_Failed(exit_code_for(exc) or EXIT_FAILURE), ranks)
        raise
    return from_main(value, ranks)


def all_true(flag: bool, ranks: Ranks) -> bool:
    """Whether ``flag`` holds on every rank."""
    if not ranks.distributed:
        return flag
    return all(_everyone(bool(flag), ranks))
