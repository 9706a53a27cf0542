"""odir_core.training.ranks: how a global batch is split over ranks and put back together, checked against
np.array_split and one process's order; the device choice; BCE with pos_weight against torch; which process
prints an error (odir_core.errors.run_cli, odir_core.training.collectives), with a stand-in for torch.distributed."""

import numpy as np
import pytest
import torch

from odir_core.data.dataset import DataError
from odir_core.errors import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, on_every_rank, run_cli
from odir_core.training.collectives import LostProcess, batch_sum, on_main, process_group
from odir_core.training.devices import DeviceError, resolve_device
from odir_core.training.losses import bce_with_logits
from odir_core.training.ranks import (
    DistributedError,
    Ranks,
    batch_sizes,
    check_batch_split,
    interleave_rows,
    loss_share,
    rank_batch,
    rank_slice,
)
from odir_core.training.run import DataSourceError


@pytest.mark.parametrize("size,world", [(7, 2), (8, 2), (2, 2), (10, 4), (5, 8)])
def test_rank_slices_are_array_split(size, world):
    rows = np.arange(size)
    expected = np.array_split(rows, world)
    for rank in range(world):
        np.testing.assert_array_equal(rows[rank_slice(size, rank, world)], expected[rank])


def test_rank_batches_keep_their_epoch_positions():
    rows = np.array([9, 4, 7, 1, 3, 0, 2])
    parts = [rank_batch(rows, 14, Ranks(rank, 2)) for rank in range(2)]
    assert [p[1] for p in parts] == [14, 18]  # positions 14..17 and 18..20 key the augmentation draws
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), rows)


def test_gathered_rows_come_back_in_one_process_order():
    rows = np.random.default_rng(0).permutation(23)
    sizes = batch_sizes(len(rows), 6)
    assert sizes == [6, 6, 6, 5]
    starts = np.cumsum([0, *sizes[:-1]])
    parts = [np.concatenate([rank_batch(rows[s:s + n], s, Ranks(r, 3))[0] for s, n in zip(starts, sizes)])
             for r in range(3)]
    np.testing.assert_array_equal(interleave_rows(parts, sizes), rows)


def test_loss_shares_make_the_mean_of_rank_gradients_the_global_mean():
    losses = np.random.default_rng(1).random(7)  # per-row losses of one global batch
    world = 2
    means = [losses[rank_slice(7, r, world)].mean() * loss_share(len(range(7)[rank_slice(7, r, world)]), 7, world)
             for r in range(world)]
    assert np.mean(means) == pytest.approx(losses.mean(), rel=1e-12)


def test_a_batch_that_leaves_a_process_empty_is_one_clear_error():
    check_batch_split(16, 7, 2)  # 7, 7, 2
    with pytest.raises(DistributedError, match="a training batch of 2 patient"):
        check_batch_split(16, 7, 3)  # 7, 7, 2


def test_ranks_come_from_torchrun_variables():
    assert Ranks.from_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1"}) == Ranks(3, 8, 1)
    assert Ranks.from_env({}) == Ranks() and Ranks().main and not Ranks().distributed


def test_device_choice():
    assert resolve_device("auto", False) == "cpu"
    assert resolve_device("auto", True, local_rank=3) == "cuda:3"
    assert resolve_device("cuda:1", True, local_rank=3) == "cuda:1"
    with pytest.raises(DeviceError, match="no CUDA device"):
        resolve_device("cuda", False)


def test_bce_with_pos_weight_is_torchs():
    rng = np.random.default_rng(2)
    x, y, w = rng.normal(size=(5, 8)), (rng.random((5, 8)) > 0.5) * 1.0, rng.random(8) + 0.5
    expected = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(w))(torch.tensor(x), torch.tensor(y)).item()
    assert bce_with_logits(x, y, w) == pytest.approx(expected, rel=1e-12)


def raising(exc):
    def fn():
        raise exc
    return fn


def tagged(exc):
    def fn():
        with on_every_rank():
            raise exc
    return fn


@pytest.mark.parametrize("fn,code,rank_0,rank_1", [
    (raising(DistributedError("--batch-size 15 over 2 processes")), EXIT_USAGE,
     "error: --batch-size 15 over 2 processes", ""),
    (tagged(ValueError("--weights w.pth: unknown file type")), EXIT_USAGE, "error: --weights w.pth: unknown file type", ""),
    (raising(DataError("patient 7: 7_left.jpg: cannot be read")), EXIT_USAGE,
     "error: patient 7: 7_left.jpg: cannot be read", "rank 1: error: patient 7: 7_left.jpg: cannot be read"),
    (raising(KeyboardInterrupt()), EXIT_INTERRUPTED, "interrupted", ""),
], ids=["options", "marked block", "own image", "Ctrl-C"])
def test_rank_0_prints_what_every_rank_meets_and_another_rank_only_its_own(fn, code, rank_0, rank_1, capsys):
    for rank, line in ((0, rank_0), (1, rank_1)):
        assert run_cli(fn, rank=rank) == code
        assert capsys.readouterr().err.strip() == line


class TwoRanks:
    """torch.distributed's object collectives for one process of two at a time (``run``): what rank 0 broadcasts
    is what rank 1 receives; ``lost``: every exchange fails as gloo's does once the other process has died."""

    def __init__(self, lost: bool = False):
        self.lost, self.sent, self.rank = lost, [], 0

    def is_initialized(self) -> bool:
        return True

    def _check(self):
        if self.lost:
            raise RuntimeError("[pair.cc:545] Read error [127.0.0.1]:33459: Connection reset by peer.\nmore")

    def broadcast_object_list(self, box, src=0):
        self._check()
        if self.rank == src:
            self.sent.append(box[0])
        else:
            box[0] = self.sent.pop(0)

    def all_gather_object(self, parts, value):
        self._check()
        parts[:] = [value, value]

    def run(self, rank: int, fn):
        self.rank = rank
        with process_group(Ranks(rank, 2), "cpu", self):
            return fn()


def test_what_rank_0_computes_for_every_rank_is_its_error_printed_once(capsys):
    group = TwoRanks()
    assert group.run(0, lambda: on_main(lambda: 5, Ranks(0, 2))) == 5
    assert group.run(1, lambda: on_main(pytest.fail, Ranks(1, 2))) == 5  # rank 1 does not compute it

    def setup():
        raise DataSourceError("--data /nowhere: not a prepared folder")

    assert run_cli(group.run, 0, lambda: on_main(setup, Ranks(0, 2)), rank=0) == EXIT_USAGE
    assert run_cli(group.run, 1, lambda: on_main(pytest.fail, Ranks(1, 2)), rank=1) == EXIT_USAGE  # MainFailed
    assert capsys.readouterr().err.strip() == "error: --data /nowhere: not a prepared folder"


def test_a_process_that_died_is_one_line_from_rank_0(capsys):
    group = TwoRanks(lost=True)
    with pytest.raises(LostProcess):
        group.run(1, lambda: batch_sum(1.0, 4, Ranks(1, 2)))
    for rank in (0, 1):
        assert run_cli(group.run, rank, lambda: batch_sum(1.0, 4, Ranks(rank, 2)), rank=rank) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert err.startswith("error: exchanging data with the other processes failed, one of them has stopped")
    assert err.count("\n") == 1 and "stalled: Read error [127.0.0.1]:33459: Connection reset by peer." in err
