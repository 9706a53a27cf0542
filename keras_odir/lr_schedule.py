"""Keras callback stepping an ``odir_core.training.schedules`` schedule once per epoch, as torch does."""

import keras

from odir_core.training.schedules import Schedule


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
