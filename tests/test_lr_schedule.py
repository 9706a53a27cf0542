"""EpochSchedule: per-epoch lr / momentum from odir_core schedules, inside model.fit."""

import numpy as np
import pytest
import torch

from keras_odir.lr_schedule import EpochSchedule
from keras_odir.optimizers import TorchSGD
from odir_core.training.schedules import make_schedule

import keras  # noqa: E402  (after keras_odir, which picks the default backend)


def tiny_model():
    inputs = keras.Input((3,))
    return keras.Model(inputs, keras.layers.Dense(2)(inputs))


def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=(4, 2)).astype(np.float32)


def torch_values(scheduler_cls, epochs, lr, **kwargs):
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=lr, momentum=0.9)
    scheduler = scheduler_cls(optimizer, **kwargs)
    lrs, momenta = [], []
    for _ in range(epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        momenta.append(optimizer.param_groups[0]["momentum"])
        optimizer.step()
        scheduler.step()
    return lrs, momenta


def test_linear_schedule_logs_torch_values_and_no_momentum():
    schedule = make_schedule("linear", 0.05, start_factor=1.0, end_factor=0.1, total_iters=3)
    model = tiny_model()
    model.compile(optimizer=TorchSGD(0.05, momentum=0.9), loss="mse")
    history = model.fit(*data(), epochs=5, verbose=0, callbacks=[EpochSchedule(schedule)])
    lrs, _ = torch_values(torch.optim.lr_scheduler.LinearLR, 5, 0.05, **schedule.torch_kwargs())
    np.testing.assert_allclose(history.history["learning_rate"], lrs, rtol=1e-6)
    assert "momentum" not in history.history
    assert float(keras.ops.convert_to_numpy(model.optimizer.momentum)) == pytest.approx(0.9)


def test_resumed_fit_continues_the_schedule():
    """With initial_epoch (as after BackupAndRestore) epoch e still gets the value after e steps."""
    schedule = make_schedule("cyclic", 0.001, max_lr=0.1, step_size_up=2, mode="triangular2")
    model = tiny_model()
    model.compile(optimizer=TorchSGD(0.5, momentum=0.5), loss="mse")
    history = model.fit(*data(), epochs=6, initial_epoch=3, verbose=0, callbacks=[EpochSchedule(schedule)])
    lrs, momenta = torch_values(torch.optim.lr_scheduler.CyclicLR, 6, 0.001, **schedule.torch_kwargs())
    np.testing.assert_allclose(history.history["learning_rate"], lrs[3:], rtol=1e-6)
    np.testing.assert_allclose(history.history["momentum"], momenta[3:], rtol=1e-6)


def test_momentum_schedule_needs_an_optimizer_with_momentum():
    schedule = make_schedule("cyclic", 0.001, max_lr=0.1, step_size_up=2)
    model = tiny_model()
    model.compile(optimizer=keras.optimizers.Adam(0.001), loss="mse")
    with pytest.raises(ValueError, match="cycles the momentum but Adam has none"):
        model.fit(*data(), epochs=1, verbose=0, callbacks=[EpochSchedule(schedule)])
