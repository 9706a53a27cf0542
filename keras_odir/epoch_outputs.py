"""The training-mode outputs of an epoch, kept by a Keras metric so that the epoch's train metrics
come from them, as in the study, rather than from a second pass over the training split."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="keras_odir")
class EpochOutputs(keras.metrics.Metric):
    """Collects the logits and labels of every training batch of the current epoch.

    A metric because ``fit`` hands every batch's outputs to the compiled metrics, on every
    backend and inside compiled train steps; Keras resets it at each epoch start. ``capacity``
    is the most samples an epoch can hold (steps x batch size). ``result()`` is empty, so
    nothing is added to the logs; read the outputs with :meth:`outputs`.
    """

    def __init__(self, capacity: int, classes: int = 8, name: str = "epoch_outputs"):
        super().__init__(name=name)
        self.capacity = int(capacity)
        self.logits = self.add_variable((self.capacity, classes), initializer="zeros", dtype="float32",
                                        name="logits")
        self.labels = self.add_variable((self.capacity, classes), initializer="zeros", dtype="float32",
                                        name="labels")
        self.count = self.add_variable((), initializer="zeros", dtype="int32", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        start = self.count.value
        self.logits.assign(ops.slice_update(self.logits.value, (start, 0), ops.cast(y_pred, "float32")))
        self.labels.assign(ops.slice_update(self.labels.value, (start, 0), ops.cast(y_true, "float32")))
        self.count.assign(start + ops.shape(y_pred)[0])

    def result(self):
        return {}

    def outputs(self) -> tuple[np.ndarray, np.ndarray]:
        """``(labels, logits)`` of the samples seen since the epoch began, in the order seen."""
        n = int(ops.convert_to_numpy(self.count.value))
        if n > self.capacity:
            raise RuntimeError(f"an epoch held {n} samples, more than the {self.capacity} planned")
        return (ops.convert_to_numpy(self.labels.value)[:n], ops.convert_to_numpy(self.logits.value)[:n])

    def get_config(self):
        return {"capacity": self.capacity, "classes": int(self.logits.shape[1]), "name": self.name}
