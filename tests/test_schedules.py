"""odir_core.training.schedules against torch's LinearLR / CyclicLR stepped once per epoch."""

import math

import pytest
import torch

from odir_core.training.schedules import (
    ConstantSchedule,
    CyclicSchedule,
    LinearSchedule,
    make_schedule,
)

EPOCHS = 100


def torch_sequence(scheduler_cls, lr, momentum, epochs=EPOCHS, **kwargs):
    """(lr, momentum) a torch SGD holds during each epoch, scheduler stepped after each."""
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=lr, momentum=momentum)
    scheduler = scheduler_cls(optimizer, **kwargs) if scheduler_cls else None
    lrs, momenta = [], []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        momenta.append(optimizer.param_groups[0]["momentum"])
        optimizer.step()
        if scheduler:
            scheduler.step()
    return lrs, momenta


def assert_sequences_equal(schedule, torch_lrs, torch_momenta, expect_momentum):
    for epoch, (lr, momentum) in enumerate(zip(torch_lrs, torch_momenta)):
        assert schedule.lr_at(epoch) == pytest.approx(lr, abs=1e-9, rel=1e-9), epoch
        ours = schedule.momentum_at(epoch)
        if expect_momentum:
            assert ours == pytest.approx(momentum, abs=1e-9, rel=1e-9), epoch
        else:
            assert ours is None


LINEAR_CASES = [
    (0.05, dict(start_factor=1.0, end_factor=0.1, total_iters=50)),  # the study's setting
    (0.01, dict(start_factor=1.0, end_factor=0.1, total_iters=50)),
    (0.1, dict(start_factor=1.0 / 3, end_factor=1.0, total_iters=5)),  # torch defaults
    (0.2, dict(start_factor=0.5, end_factor=0.0, total_iters=100)),
    (0.3, dict(start_factor=0.25, end_factor=0.75, total_iters=7)),
    (0.1, dict(start_factor=0.5, end_factor=1.0, total_iters=0)),
    (0.1, dict(start_factor=1.0, end_factor=0.01, total_iters=200)),
]


@pytest.mark.parametrize("lr,kwargs", LINEAR_CASES)
def test_linear_equals_torch_linear_lr(lr, kwargs):
    lrs, momenta = torch_sequence(torch.optim.lr_scheduler.LinearLR, lr, 0.9, **kwargs)
    schedule = make_schedule("linear", lr, **kwargs)
    assert schedule == LinearSchedule(base_lr=lr, **kwargs)
    assert_sequences_equal(schedule, lrs, momenta, expect_momentum=False)


CYCLIC_CASES = [
    dict(base_lr=0.001, max_lr=0.1, step_size_up=10, mode="triangular2"),  # the study's setting
    dict(base_lr=0.001, max_lr=0.1, step_size_up=10, mode="triangular"),
    dict(base_lr=0.01, max_lr=0.05, step_size_up=3, step_size_down=7, mode="triangular2"),
    dict(base_lr=0.01, max_lr=0.05, step_size_up=4, mode="exp_range", gamma=0.97),
    dict(base_lr=0.002, max_lr=0.2, step_size_up=1, mode="triangular2",
         base_momentum=0.85, max_momentum=0.95),
    dict(base_lr=0.001, max_lr=0.1, step_size_up=10, mode="triangular2", cycle_momentum=False),
]


@pytest.mark.parametrize("kwargs", CYCLIC_CASES)
def test_cyclic_equals_torch_cyclic_lr(kwargs):
    # The optimizer's own lr / momentum must be overridden by CyclicLR (lr 0.5, mu 0.3 here).
    lrs, momenta = torch_sequence(torch.optim.lr_scheduler.CyclicLR, 0.5, 0.3, **kwargs)
    params = dict(kwargs)
    schedule = make_schedule("cyclic", params.pop("base_lr"), **params)
    assert_sequences_equal(
        schedule, lrs, momenta, expect_momentum=kwargs.get("cycle_momentum", True)
    )


def test_none_keeps_lr_and_momentum():
    lrs, momenta = torch_sequence(None, 0.05, 0.9)
    schedule = make_schedule("none", 0.05)
    assert schedule == ConstantSchedule(0.05)
    assert_sequences_equal(schedule, lrs, momenta, expect_momentum=False)


def test_study_cyclic_values_by_hand():
    """Hand-computed: triangular2 over 0.001..0.1, step 10 -> peak 0.1 at epoch 10,
    back at 0.001 at 20, second peak 0.001 + 0.099/2 at 30; momentum 0.9 -> 0.8 -> 0.9."""
    s = make_schedule("cyclic", 0.001, max_lr=0.1, step_size_up=10, mode="triangular2")
    assert s.lr_at(0) == pytest.approx(0.001, abs=1e-15)
    assert s.lr_at(5) == pytest.approx(0.001 + 0.099 * 0.5, abs=1e-15)
    assert s.lr_at(10) == pytest.approx(0.1, abs=1e-15)
    assert s.lr_at(20) == pytest.approx(0.001, abs=1e-15)
    assert s.lr_at(30) == pytest.approx(0.001 + 0.0495, abs=1e-15)
    assert s.lr_at(50) == pytest.approx(0.001 + 0.02475, abs=1e-15)
    assert s.momentum_at(0) == pytest.approx(0.9, abs=1e-15)
    assert s.momentum_at(10) == pytest.approx(0.8, abs=1e-15)
    assert s.momentum_at(30) == pytest.approx(0.85, abs=1e-15)


def test_study_linear_values_by_hand():
    s = make_schedule("linear", 0.05, start_factor=1.0, end_factor=0.1, total_iters=50)
    assert s.lr_at(0) == pytest.approx(0.05, abs=1e-15)
    assert s.lr_at(25) == pytest.approx(0.05 * 0.55, abs=1e-15)
    assert s.lr_at(50) == pytest.approx(0.005, abs=1e-15)
    assert s.lr_at(99) == pytest.approx(0.005, abs=1e-15)
    assert math.isclose(s.lr_at(1), 0.05 * (1 - 0.9 / 50), rel_tol=1e-15)


def test_torch_kwargs_build_the_same_torch_scheduler():
    s = make_schedule("cyclic", 0.001, max_lr=0.1, step_size_up=10, mode="triangular2")
    assert s.torch_name == "CyclicLR"
    lrs, momenta = torch_sequence(torch.optim.lr_scheduler.CyclicLR, 0.001, 0.9, **s.torch_kwargs())
    assert_sequences_equal(s, lrs, momenta, expect_momentum=True)
    lin = make_schedule("linear", 0.05, start_factor=1.0, end_factor=0.1, total_iters=50)
    lrs, momenta = torch_sequence(torch.optim.lr_scheduler.LinearLR, 0.05, 0.9, **lin.torch_kwargs())
    assert_sequences_equal(lin, lrs, momenta, expect_momentum=False)


@pytest.mark.parametrize(
    "name,lr,params,match",
    [
        ("cosine", 0.1, {}, "unknown scheduler 'cosine'"),
        ("linear", 0.1, {"max_lr": 1.0}, "does not take max_lr"),
        ("none", 0.1, {"total_iters": 3}, "does not take total_iters"),
        ("cyclic", 0.1, {"step_size_up": 3}, "max_lr is required"),
        ("cyclic", 0.1, {"max_lr": 1.0, "mode": "sine"}, "mode must be"),
        ("cyclic", 0.1, {"max_lr": 1.0, "step_size_up": 0}, "step_size_up must be > 0"),
        ("linear", 0.1, {"start_factor": 0.0}, "start_factor must be in"),
        ("linear", 0.1, {"end_factor": 1.5}, "end_factor must be in"),
        ("linear", 0.1, {"total_iters": 2.5}, "total_iters must be"),
    ],
)
def test_bad_parameters_are_rejected(name, lr, params, match):
    with pytest.raises(ValueError, match=match):
        make_schedule(name, lr, **params)


def test_negative_epoch_is_rejected():
    for s in (ConstantSchedule(0.1), LinearSchedule(0.1), CyclicSchedule(0.1, 1.0)):
        with pytest.raises(ValueError, match="epoch must be >= 0"):
            s.lr_at(-1)
