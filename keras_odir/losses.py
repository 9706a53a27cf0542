"""Binary cross-entropy on logits with torch's per-label ``pos_weight`` (keras.ops only)."""

import math

import keras
import numpy as np
from keras import ops


@keras.saving.register_keras_serializable(package="keras_odir")
class WeightedBCEWithLogits(keras.losses.Loss):
    """``torch.nn.BCEWithLogitsLoss(pos_weight=...)`` for multi-label logits.

    Per element, with logit ``x``, target ``y`` and the label's weight ``p``::

        loss = -(p * y * log(sigmoid(x)) + (1 - y) * log(1 - sigmoid(x)))
             = (1 - y) * x + (1 + (p - 1) * y) * (log1p(exp(-|x|)) + max(-x, 0))

    (the second, overflow-free form is torch's). ``call`` returns the mean over labels
    per sample; the default reduction then averages over the batch, i.e. the mean over
    batch and labels, as torch's ``reduction="mean"``. ``pos_weight=None`` is plain BCE.
    Keras' ``binary_crossentropy(from_logits=True)`` has no per-label positive weight.
    """

    def __init__(
        self,
        pos_weight=None,
        reduction="sum_over_batch_size",
        name="weighted_bce_with_logits",
        dtype=None,
    ):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if pos_weight is not None:
            pos_weight = [float(w) for w in np.asarray(pos_weight, dtype=np.float64).reshape(-1)]
            if not all(math.isfinite(w) and w >= 0 for w in pos_weight):
                raise ValueError(
                    f"WeightedBCEWithLogits: pos_weight must be finite and >= 0, got {pos_weight}"
                )
        self.pos_weight = pos_weight

    def call(self, y_true, y_pred):
        """Per-sample loss: mean over the last (label) axis."""
        x = ops.convert_to_tensor(y_pred)
        y = ops.cast(y_true, x.dtype)
        # -log(sigmoid(x)) = log1p(exp(-|x|)) + max(-x, 0), finite for any x.
        neg_log_sigmoid = ops.add(ops.log1p(ops.exp(ops.negative(ops.abs(x)))), ops.relu(ops.negative(x)))
        if self.pos_weight is None:
            elementwise = ops.add(ops.multiply(ops.subtract(1.0, y), x), neg_log_sigmoid)
        else:
            p = ops.convert_to_tensor(self.pos_weight, dtype=x.dtype)
            log_weight = ops.add(ops.multiply(ops.subtract(p, 1.0), y), 1.0)
            elementwise = ops.add(
                ops.multiply(ops.subtract(1.0, y), x), ops.multiply(log_weight, neg_log_sigmoid)
            )
        return ops.mean(elementwise, axis=-1)

    def get_config(self):
        """Constructor arguments (pos_weight as a list of floats)."""
        config = super().get_config()
        config["pos_weight"] = self.pos_weight
        return config

