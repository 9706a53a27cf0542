"""odir_core.training.schedules against torch's LinearLR / CyclicLR / CosineAnnealingLR / LambdaLR, stepped once per
epoch (or per step)."""

import math

import pytest
import torch

from odir_core.training.schedules import (
    ConstantSchedule,
    CyclicSchedule,
    LinearSchedule,
    WarmupCosineSchedule,
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
        ("warmup_cosine", 0.1, {"warmup_epochs": 2}, "epochs is required"),
        ("warmup_cosine", 0.1, {"epochs": 5, "warmup_epochs": 5}, "warmup_epochs must be in"),
        ("warmup_cosine", 0.1, {"epochs": 5, "min_lr": 0.2}, "min_lr must be in"),
        ("warmup_cosine", 0.1, {"epochs": 5, "steps_per_epoch": 0}, "steps_per_epoch must be"),
        ("warmup_cosine", 0.1, {"epochs": 5, "max_lr": 1.0}, "does not take max_lr"),
    ],
)
def test_bad_parameters_are_rejected(name, lr, params, match):
    with pytest.raises(ValueError, match=match):
        make_schedule(name, lr, **params)


def test_negative_epoch_is_rejected():
    for s in (ConstantSchedule(0.1), LinearSchedule(0.1), CyclicSchedule(0.1, 1.0), WarmupCosineSchedule(0.1, 3)):
        with pytest.raises(ValueError, match="epoch must be >= 0"):
            s.lr_at(-1)


# (lr, epochs, warmup_epochs, min_lr, steps_per_epoch): RETFound's fine-tuning shape (per step), per epoch, no warm-up
WARMUP_COSINE_CASES = [(5e-4, 10, 2, 1e-6, 7), (0.01, 20, 3, 0.0, 1), (0.1, 6, 0, 1e-3, 4), (0.05, 12, 1, 0.0, 1)]


def torch_warmup_cosine(lr, epochs, warmup_epochs, min_lr, steps):
    """The lr of each iteration from torch's own schedulers: iteration 0 at 0, then LinearLR(1 / W, 1, W - 1)
    (lr * (i + 1) / W, i.e. lr * t / W at iteration t = i + 1) over the warm-up's W iterations, then
    CosineAnnealingLR(T_max = the rest, eta_min = min_lr), each stepped once per iteration (chainable form)."""
    warmup, total = warmup_epochs * steps, epochs * steps
    lrs = []
    if warmup:
        param = torch.nn.Parameter(torch.zeros(1))
        optimizer = torch.optim.AdamW([param], lr=lr)
        linear = torch.optim.lr_scheduler.LinearLR(optimizer, 1 / warmup, 1.0, warmup - 1)
        lrs.append(0.0)
        for _ in range(warmup - 1):
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            linear.step()
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param], lr=lr)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total - warmup, eta_min=min_lr)
    for _ in range(total - warmup):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        cosine.step()
    return lrs


@pytest.mark.parametrize("lr,epochs,warmup_epochs,min_lr,steps", WARMUP_COSINE_CASES)
def test_warmup_cosine_equals_torch_linear_then_cosine_annealing(lr, epochs, warmup_epochs, min_lr, steps):
    params = dict(epochs=epochs, warmup_epochs=warmup_epochs, min_lr=min_lr, steps_per_epoch=steps)
    schedule = make_schedule("warmup_cosine", lr, **params)
    assert schedule == WarmupCosineSchedule(base_lr=lr, **params)
    expected = torch_warmup_cosine(lr, epochs, warmup_epochs, min_lr, steps)
    assert len(expected) == epochs * steps
    for i, want in enumerate(expected):
        assert schedule.lr_at(i) == pytest.approx(want, abs=1e-12, rel=1e-9), i
        assert schedule.momentum_at(i) is None


def test_warmup_cosine_lambda_lr_gives_each_group_its_scaled_value():
    """torch_odir's LambdaLR (torch_kwargs) multiplies each param group's own lr (layer decay) by the factor."""
    schedule = make_schedule("warmup_cosine", 0.01, epochs=4, warmup_epochs=1, min_lr=1e-4, steps_per_epoch=3)
    assert schedule.torch_name == "LambdaLR"
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    optimizer = torch.optim.AdamW([{"params": [params[0]], "lr": 0.01}, {"params": [params[1]], "lr": 0.01 * 0.65}])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, **schedule.torch_kwargs())
    for i in range(12):
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx(
            [schedule.lr_at(i), 0.65 * schedule.lr_at(i)], abs=1e-15, rel=1e-12)
        optimizer.step()
        scheduler.step()


def test_warmup_cosine_values_by_hand():
    """RETFound's adjust_learning_rate: lr * t / W in the warm-up, then min_lr + (lr - min_lr) * (1 + cos) / 2."""
    s = make_schedule("warmup_cosine", 0.1, epochs=10, warmup_epochs=2, min_lr=0.0, steps_per_epoch=4)
    assert s.lr_at(0) == 0.0
    assert s.lr_at(3) == pytest.approx(0.1 * 0.75 / 2, abs=1e-15)  # t = 0.75
    assert s.lr_at(8) == pytest.approx(0.1, abs=1e-15)  # t = 2: the peak
    assert s.lr_at(24) == pytest.approx(0.05, abs=1e-15)  # t = 6: half way down the cosine
    per_epoch = make_schedule("warmup_cosine", 0.1, epochs=10, warmup_epochs=2, min_lr=0.01)
    assert per_epoch.lr_at(1) == pytest.approx(0.05, abs=1e-15)
    assert per_epoch.lr_at(6) == pytest.approx(0.01 + 0.09 * 0.5, abs=1e-15)
