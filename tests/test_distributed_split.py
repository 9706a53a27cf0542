"""odir_core.distributed: how a global batch is split over ranks and put back together, checked against
np.array_split and one process's order; the device choice; BCE with pos_weight against torch."""

import numpy as np
import pytest
import torch

from odir_core.devices import DeviceError, resolve_device
from odir_core.distributed import (
    DistributedError,
    Ranks,
    batch_sizes,
    check_batch_split,
    interleave_rows,
    loss_share,
    rank_batch,
    rank_slice,
)
from odir_core.history import bce_with_logits


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
    with pytest.raises(DistributedError, match="a training batch of 1 patient"):
        check_batch_split(15, 7, 2)  # 7, 7, 1


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
