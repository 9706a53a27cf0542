"""``odir_core.training.schedules`` schedules in Keras: a callback stepping one once per epoch, as torch does, and
a per-step schedule as the optimizer's learning rate."""

import keras
import numpy as np

from odir_core.training.schedules import Schedule, make_schedule


class EpochSchedule(keras.callbacks.LearningRateScheduler):
    """Sets the optimizer's learning rate, and momentum where the schedule cycles it, at the
    start of each epoch: epoch ``e`` trains with the values a torch scheduler holds after
    ``e`` steps (``schedule.lr_at(e)``, ``schedule.momentum_at(e)``). The absolute epoch
    index is used, so a resumed run (``initial_epoch``) continues the same schedule.

    Epoch logs get ``learning_rate`` (as Keras' LearningRateScheduler) and, for a schedule
    that sets it, ``momentum``. The optimizer needs a ``momentum`` attribute that accepts a
    float (``keras_odir.optimizers.TorchSGD``) when the schedule sets the momentum.
    """

    def __init__(self, schedule: Schedule, verbose: int = 0):
        super().__init__(lambda epoch, lr=None: float(schedule.lr_at(epoch)), verbose=verbose)
        self.epoch_schedule = schedule

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        momentum = self.epoch_schedule.momentum_at(epoch)
        if momentum is not None:
            optimizer = getattr(self.model.optimizer, "inner_optimizer", self.model.optimizer)  # loss scaling
            if not hasattr(optimizer, "momentum"):
                raise ValueError(
                    f"the schedule cycles the momentum but {type(optimizer).__name__} has none; "
                    "use keras_odir.optimizers.TorchSGD or a schedule without cycle_momentum"
                )
            optimizer.momentum = momentum

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, logs)
        if logs is not None and self.epoch_schedule.momentum_at(epoch) is not None:
            optimizer = getattr(self.model.optimizer, "inner_optimizer", self.model.optimizer)
            logs["momentum"] = float(keras.ops.convert_to_numpy(optimizer.momentum))


@keras.saving.register_keras_serializable(package="keras_odir")
class StepLearningRate(keras.optimizers.schedules.LearningRateSchedule):
    """A schedule of ``odir_core.training.schedules`` stepped per optimizer step (``steps_per_epoch`` in its
    params), as an optimizer's ``learning_rate``: step ``i`` trains with ``lr_at(i)``, looked up in a table of the
    run's ``epochs * steps_per_epoch`` values (computed in float64 as torch's ``LambdaLR`` does, then float32), so
    every backend and a resumed run (the optimizer's step count is saved with it) get the same numbers."""

    def __init__(self, name: str, lr: float, params: dict):
        self.name, self.lr, self.params = name, float(lr), dict(params)
        self.schedule = make_schedule(name, lr, **params)
        steps = self.params["epochs"] * self.params["steps_per_epoch"]
        self.table = np.array([self.schedule.lr_at(i) for i in range(steps)], dtype=np.float32)

    def __call__(self, step):
        index = keras.ops.minimum(keras.ops.cast(step, "int32"), len(self.table) - 1)
        return keras.ops.take(keras.ops.convert_to_tensor(self.table), index)

    def get_config(self):
        """Constructor arguments."""
        return {"name": self.name, "lr": self.lr, "params": self.params}


class StepScheduleLog(keras.callbacks.Callback):
    """Logs ``learning_rate`` at each epoch's end for a per-step schedule: the value of the epoch's last step (what
    torch_odir.train records)."""

    def __init__(self, schedule: Schedule, steps_per_epoch: int):
        super().__init__()
        self.step_schedule, self.steps_per_epoch = schedule, steps_per_epoch

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(np.float32(self.step_schedule.lr_at((epoch + 1) * self.steps_per_epoch - 1)))
