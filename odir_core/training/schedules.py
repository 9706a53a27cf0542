"""Learning-rate and momentum schedules, equal to torch's schedulers stepped once per epoch (or per step).

Epoch ``e`` (0-based) trains with the value a torch scheduler holds after ``e`` calls of
``scheduler.step()`` (construction itself performs the first, "epoch 0", evaluation):

- ``"none"``: the optimizer's learning rate, unchanged.
- ``"linear"``: ``torch.optim.lr_scheduler.LinearLR(start_factor, end_factor, total_iters)``.
- ``"cyclic"``: ``torch.optim.lr_scheduler.CyclicLR(base_lr, max_lr, step_size_up, ...)``,
  where one scheduler "iteration" is one epoch. It also cycles the momentum inversely to
  the learning rate (``cycle_momentum=True``, torch's default), and overrides the
  optimizer's learning rate (epoch 0 trains at ``base_lr``) and momentum (``max_momentum``).
- ``"warmup_cosine"``: a linear warm-up from 0 then a half cosine down to ``min_lr`` (RETFound's and MAE's
  ``adjust_learning_rate``), per epoch or, with ``steps_per_epoch``, per optimizer step on fractional epochs;
  torch_odir drives it with ``torch.optim.lr_scheduler.LambdaLR`` (:meth:`WarmupCosineSchedule.factor_at`).

The schedules are pure functions of the epoch (closed forms), so a resumed run gets the
same values as an uninterrupted one. ``torch_kwargs()`` gives the arguments for the torch
scheduler of the same name, so both packages build their schedule from one config.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULERS = ("none", "linear", "cyclic", "warmup_cosine")
SCHEDULE_STEPS = ("epoch", "step")  # when the schedule changes the learning rate: each epoch or each step
CYCLIC_MODES = ("triangular", "triangular2", "exp_range")


@dataclass(frozen=True)
class ConstantSchedule:
    """No schedule: every epoch uses ``lr``; momentum is left to the optimizer."""

    lr: float

    torch_name = None

    def lr_at(self, epoch: int) -> float:
        """Learning rate for 0-based ``epoch``."""
        _check_epoch(epoch)
        return float(self.lr)

    def momentum_at(self, epoch: int) -> float | None:
        """Momentum for ``epoch``, or None when the schedule does not set it."""
        _check_epoch(epoch)
        return None

    def torch_kwargs(self) -> dict:
        """Arguments for the torch scheduler (none for a constant learning rate)."""
        return {}


@dataclass(frozen=True)
class LinearSchedule:
    """torch ``LinearLR``: the factor goes linearly from ``start_factor`` to ``end_factor``
    over ``total_iters`` epochs and then stays at ``end_factor``.

    torch applies it multiplicatively (chainable form): after step ``e`` (1 <= e <= T)
    lr_e = lr_{e-1} * (1 + (f1 - f0) / (T*f0 + (e-1)*(f1 - f0))); writing
    D_e = T*f0 + e*(f1 - f0), the ratio is D_e / D_{e-1}, so the product telescopes to
    lr_e = base_lr * f0 * D_e / D_0 = base_lr * (f0 + (f1 - f0) * e / T), the closed form
    used here (tests compare it with torch's chainable steps).
    """

    base_lr: float
    start_factor: float = 1.0 / 3
    end_factor: float = 1.0
    total_iters: int = 5

    torch_name = "LinearLR"

    def __post_init__(self):
        if not 0 < self.start_factor <= 1:
            raise ValueError(
                f"linear schedule: start_factor must be in (0, 1], got {self.start_factor}"
            )
        if not 0 <= self.end_factor <= 1:
            raise ValueError(
                f"linear schedule: end_factor must be in [0, 1], got {self.end_factor}"
            )
        if int(self.total_iters) != self.total_iters or self.total_iters < 0:
            raise ValueError(
                f"linear schedule: total_iters must be a whole number >= 0, got {self.total_iters}"
            )

    def lr_at(self, epoch: int) -> float:
        """Learning rate for 0-based ``epoch``."""
        _check_epoch(epoch)
        if self.total_iters == 0:  # torch: scaled by start_factor once, never changed again
            return self.base_lr * self.start_factor
        progress = min(epoch, self.total_iters) / self.total_iters
        return self.base_lr * (
            self.start_factor + (self.end_factor - self.start_factor) * progress
        )

    def momentum_at(self, epoch: int) -> float | None:
        """LinearLR leaves the momentum alone: None."""
        _check_epoch(epoch)
        return None

    def torch_kwargs(self) -> dict:
        """Keyword arguments of ``torch.optim.lr_scheduler.LinearLR`` (besides the optimizer)."""
        return {
            "start_factor": self.start_factor,
            "end_factor": self.end_factor,
            "total_iters": int(self.total_iters),
        }


@dataclass(frozen=True)
class CyclicSchedule:
    """torch ``CyclicLR`` with one scheduler iteration per epoch (torch's own formula).

    ``mode``: ``triangular`` (constant amplitude), ``triangular2`` (amplitude halved every
    cycle) or ``exp_range`` (amplitude times ``gamma**epoch``). Momentum goes from
    ``max_momentum`` (at ``base_lr``) to ``base_momentum`` (at the peak) when
    ``cycle_momentum``.
    """

    base_lr: float
    max_lr: float
    step_size_up: int = 2000
    step_size_down: int | None = None
    mode: str = "triangular"
    gamma: float = 1.0
    cycle_momentum: bool = True
    base_momentum: float = 0.8
    max_momentum: float = 0.9

    torch_name = "CyclicLR"

    def __post_init__(self):
        if self.mode not in CYCLIC_MODES:
            raise ValueError(f"cyclic schedule: mode must be one of {', '.join(CYCLIC_MODES)}, got {self.mode!r}")
        if self.step_size_up <= 0 or (
            self.step_size_down is not None and self.step_size_down < 0
        ):
            raise ValueError(
                "cyclic schedule: step_size_up must be > 0 and step_size_down >= 0, got "
                f"{self.step_size_up} and {self.step_size_down}"
            )

    def _phase(self, epoch: int) -> tuple[float, float]:
        """(scale_factor in [0, 1] within the cycle, amplitude scale) as torch computes them."""
        up = float(self.step_size_up)
        down = float(self.step_size_down) if self.step_size_down is not None else up
        total = up + down
        step_ratio = up / total
        cycle = math.floor(1 + epoch / total)
        x = 1.0 + epoch / total - cycle
        if x <= step_ratio:
            scale_factor = x / step_ratio
        else:
            scale_factor = (x - 1) / (step_ratio - 1)
        if self.mode == "triangular":
            amplitude = 1.0
        elif self.mode == "triangular2":
            amplitude = 1 / (2.0 ** (cycle - 1))
        else:
            amplitude = self.gamma**epoch
        return scale_factor, amplitude

    def lr_at(self, epoch: int) -> float:
        """Learning rate for 0-based ``epoch``."""
        _check_epoch(epoch)
        scale_factor, amplitude = self._phase(epoch)
        return self.base_lr + (self.max_lr - self.base_lr) * scale_factor * amplitude

    def momentum_at(self, epoch: int) -> float | None:
        """Momentum for ``epoch`` (cycled inversely to the lr), or None without cycle_momentum."""
        _check_epoch(epoch)
        if not self.cycle_momentum:
            return None
        scale_factor, amplitude = self._phase(epoch)
        return (
            self.max_momentum
            - (self.max_momentum - self.base_momentum) * scale_factor * amplitude
        )

    def torch_kwargs(self) -> dict:
        """Keyword arguments of ``torch.optim.lr_scheduler.CyclicLR`` (besides the optimizer)."""
        return {
            "base_lr": self.base_lr,
            "max_lr": self.max_lr,
            "step_size_up": int(self.step_size_up),
            "step_size_down": None if self.step_size_down is None else int(self.step_size_down),
            "mode": self.mode,
            "gamma": self.gamma,
            "cycle_momentum": self.cycle_momentum,
            "base_momentum": self.base_momentum,
            "max_momentum": self.max_momentum,
        }


@dataclass(frozen=True)
class WarmupCosineSchedule:
    """RETFound's (and MAE's) ``adjust_learning_rate``: at iteration ``i`` (an epoch, or an optimizer step when
    ``steps_per_epoch`` > 1), on the fractional epoch ``t = i / steps_per_epoch``::

        t <  warmup_epochs:  lr = base_lr * t / warmup_epochs
        t >= warmup_epochs:  lr = min_lr + (base_lr - min_lr) * (1 + cos(pi * (t - warmup_epochs)
                                                                        / (epochs - warmup_epochs))) / 2

    Iteration 0 of a warm-up trains at lr 0, as there. The warm-up equals torch's ``LinearLR`` and the decay
    its ``CosineAnnealingLR`` (``eta_min=min_lr``), which the tests check step by step.
    """

    base_lr: float
    epochs: int
    warmup_epochs: int = 0
    min_lr: float = 0.0
    steps_per_epoch: int = 1

    torch_name = "LambdaLR"

    def __post_init__(self):
        if not 0 <= self.warmup_epochs < self.epochs:
            raise ValueError(f"warmup_cosine schedule: warmup_epochs must be in [0, epochs = {self.epochs}), "
                             f"got {self.warmup_epochs}")
        if not 0 <= self.min_lr <= self.base_lr:
            raise ValueError(f"warmup_cosine schedule: min_lr must be in [0, lr = {self.base_lr}], got {self.min_lr}")
        if self.steps_per_epoch < 1:
            raise ValueError(f"warmup_cosine schedule: steps_per_epoch must be >= 1, got {self.steps_per_epoch}")

    def lr_at(self, iteration: int) -> float:
        """Learning rate for 0-based ``iteration`` (epoch, or step with ``steps_per_epoch``)."""
        _check_epoch(iteration)
        t = iteration / self.steps_per_epoch
        if t < self.warmup_epochs:
            return self.base_lr * t / self.warmup_epochs
        progress = (t - self.warmup_epochs) / (self.epochs - self.warmup_epochs)
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def factor_at(self, iteration: int) -> float:
        """``lr_at(iteration) / base_lr``: ``LambdaLR``'s factor of each group's own learning rate."""
        return self.lr_at(iteration) / self.base_lr

    def momentum_at(self, iteration: int) -> float | None:
        """The schedule leaves the momentum alone: None."""
        _check_epoch(iteration)
        return None

    def torch_kwargs(self) -> dict:
        """Keyword arguments of ``torch.optim.lr_scheduler.LambdaLR`` (besides the optimizer)."""
        return {"lr_lambda": lambda iteration: self.factor_at(iteration)}


Schedule = ConstantSchedule | LinearSchedule | CyclicSchedule | WarmupCosineSchedule


def make_schedule(name: str, lr: float, **params) -> Schedule:
    """Build the schedule ``name`` ("none", "linear" or "cyclic") for an optimizer with base lr ``lr``.

    ``params`` are the torch scheduler's keyword arguments: for "linear" ``start_factor``,
    ``end_factor``, ``total_iters``; for "cyclic" ``max_lr`` (required), ``base_lr``
    (default ``lr``), ``step_size_up``, ``step_size_down``, ``mode``, ``gamma``,
    ``cycle_momentum``, ``base_momentum``, ``max_momentum``; for "warmup_cosine" ``epochs`` (required),
    ``warmup_epochs``, ``min_lr``, ``steps_per_epoch``. "none" takes none.
    """
    if name == "none":
        _reject_unknown(name, params, set())
        return ConstantSchedule(lr=float(lr))
    if name == "linear":
        _reject_unknown(name, params, {"start_factor", "end_factor", "total_iters"})
        return LinearSchedule(base_lr=float(lr), **params)
    if name == "cyclic":
        _reject_unknown(
            name,
            params,
            {
                "base_lr", "max_lr", "step_size_up", "step_size_down", "mode", "gamma",
                "cycle_momentum", "base_momentum", "max_momentum",
            },
        )
        if "max_lr" not in params:
            raise ValueError("cyclic schedule: max_lr is required (e.g. max_lr=0.1)")
        params = {"base_lr": float(lr), **params}
        return CyclicSchedule(**params)
    if name == "warmup_cosine":
        _reject_unknown(name, params, {"epochs", "warmup_epochs", "min_lr", "steps_per_epoch"})
        if "epochs" not in params:
            raise ValueError("warmup_cosine schedule: epochs is required (the length of the cosine)")
        return WarmupCosineSchedule(base_lr=float(lr), **params)
    raise ValueError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")


def _reject_unknown(name: str, params: dict, allowed: set) -> None:
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(
            f"scheduler {name!r} does not take {', '.join(unknown)}; "
            f"it takes: {', '.join(sorted(allowed)) or 'no parameters'}"
        )


def _check_epoch(epoch: int) -> None:
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0, got {epoch}")
