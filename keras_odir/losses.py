"""The training losses on logits (keras.ops only): binary cross-entropy with torch's per-label ``pos_weight``, the
focal loss and the asymmetric loss (formulas: :mod:`odir_core.training.losses`), and :func:`training_loss`, the one
of a training config."""

import math

import keras
import numpy as np
from keras import ops

from odir_core.training import losses
from odir_core.training.config import checked_parameter


def _checked_pos_weight(owner: str, pos_weight) -> list[float] | None:
    """``pos_weight`` as a list of floats (None stays None); a ValueError unless each is finite and >= 0."""
    if pos_weight is None:
        return None
    weights = [float(w) for w in np.asarray(pos_weight, dtype=np.float64).reshape(-1)]
    if not all(math.isfinite(w) and w >= 0 for w in weights):
        raise ValueError(f"{owner}: pos_weight must be finite and >= 0, got {weights}")
    return weights


def _log_sigmoids(x):
    """(log sigmoid(x), log(1 - sigmoid(x))) = (-(log1p(exp(-|x|)) + max(-x, 0)), -(log1p(exp(-|x|)) + max(x, 0))),
    finite for any x."""
    tail = ops.log1p(ops.exp(ops.negative(ops.abs(x))))
    return ops.negative(ops.add(tail, ops.relu(ops.negative(x)))), ops.negative(ops.add(tail, ops.relu(x)))


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
        self.pos_weight = _checked_pos_weight(type(self).__name__, pos_weight)

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



class _FocusedLossWithLogits(keras.losses.Loss):
    """A loss ``-(w y positive + (1 - y) negative)`` per element, from the terms ``_terms(x) -> (positive,
    negative)`` of a subclass; ``w``: the label's ``pos_weight`` (None: 1). ``call`` returns the mean over labels
    per sample and the default reduction the mean over the batch, as :class:`WeightedBCEWithLogits`."""

    def __init__(self, pos_weight=None, reduction="sum_over_batch_size", name=None, dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.pos_weight = _checked_pos_weight(type(self).__name__, pos_weight)

    def _terms(self, x):
        raise NotImplementedError

    def call(self, y_true, y_pred):
        """Per-sample loss: mean over the last (label) axis."""
        x = ops.convert_to_tensor(y_pred)
        y = ops.cast(y_true, x.dtype)
        positive, negative = self._terms(x)
        if self.pos_weight is not None:
            positive = ops.multiply(ops.convert_to_tensor(self.pos_weight, dtype=x.dtype), positive)
        elementwise = ops.add(ops.multiply(y, positive), ops.multiply(ops.subtract(1.0, y), negative))
        return ops.negative(ops.mean(elementwise, axis=-1))

    def get_config(self):
        config = super().get_config()
        config["pos_weight"] = self.pos_weight
        return config


@keras.saving.register_keras_serializable(package="keras_odir")
class FocalLossWithLogits(_FocusedLossWithLogits):
    """The focal loss of Lin et al. (ICCV 2017) on multi-label logits, per element::

        loss = -(w y a (1 - p)^g log p + (1 - y) (1 - a) p^g log(1 - p)),   p = sigmoid(x)

    with ``g = gamma``, ``a = alpha`` (``alpha = -1``: no ``a`` / ``1 - a`` factors) and ``w`` the label's
    ``pos_weight`` (None: 1). Without ``pos_weight`` this is ``torchvision.ops.sigmoid_focal_loss(reduction="mean")``
    for 0/1 targets: the mean over batch and labels (torchvision also offers "none" and "sum"). The powers are
    ``exp(g log(...))`` of log-sigmoids, finite with finite gradients for any logit.
    """

    def __init__(self, gamma=losses.FOCAL_GAMMA, alpha=losses.FOCAL_ALPHA, pos_weight=None,
                 reduction="sum_over_batch_size", name="focal_loss_with_logits", dtype=None):
        super().__init__(pos_weight=pos_weight, reduction=reduction, name=name, dtype=dtype)
        owner = type(self).__name__
        self.gamma = checked_parameter(gamma, "focal_gamma", owner, "gamma")
        self.alpha = checked_parameter(alpha, "focal_alpha", owner, "alpha")

    def _terms(self, x):
        log_p, log_not_p = _log_sigmoids(x)
        positive = ops.multiply(ops.exp(ops.multiply(self.gamma, log_not_p)), log_p)
        negative = ops.multiply(ops.exp(ops.multiply(self.gamma, log_p)), log_not_p)
        if self.alpha >= 0:
            positive, negative = ops.multiply(self.alpha, positive), ops.multiply(1.0 - self.alpha, negative)
        return positive, negative

    def get_config(self):
        return {**super().get_config(), "gamma": self.gamma, "alpha": self.alpha}


@keras.saving.register_keras_serializable(package="keras_odir")
class AsymmetricLossWithLogits(_FocusedLossWithLogits):
    """The asymmetric loss (ASL) of Ridnik, Ben-Baruch et al. (ICCV 2021) on multi-label logits, per element::

        loss = -(w y (1 - p)^gp log p + (1 - y) pm^gn log(1 - pm)),   p = sigmoid(x),   pm = max(p - m, 0)

    with ``gp = gamma_pos``, ``gn = gamma_neg``, ``m = clip`` (the probability margin) and ``w`` the label's
    ``pos_weight`` (None: 1). Mean over batch and labels (the official code returns the sum, ``-loss.sum()``). The
    focusing weights keep their gradient (the official code can detach them: ``disable_torch_grad_focal_loss``), and
    no ``eps`` clamps the probabilities inside the logs: log-sigmoids, and ``log(1 - pm) = log(min(1 - p + m, 1))``
    at least ``log m``, keep every value and gradient finite.
    """

    def __init__(self, gamma_neg=losses.ASL_GAMMA_NEG, gamma_pos=losses.ASL_GAMMA_POS, clip=losses.ASL_CLIP,
                 pos_weight=None, reduction="sum_over_batch_size", name="asymmetric_loss_with_logits", dtype=None):
        super().__init__(pos_weight=pos_weight, reduction=reduction, name=name, dtype=dtype)
        owner = type(self).__name__
        self.gamma_neg = checked_parameter(gamma_neg, "asl_gamma_neg", owner, "gamma_neg")
        self.gamma_pos = checked_parameter(gamma_pos, "asl_gamma_pos", owner, "gamma_pos")
        self.clip = checked_parameter(clip, "asl_clip", owner, "clip")

    def _terms(self, x):
        log_p, log_not_p = _log_sigmoids(x)
        positive = ops.multiply(ops.exp(ops.multiply(self.gamma_pos, log_not_p)), log_p)
        if self.clip == 0:
            return positive, ops.multiply(ops.exp(ops.multiply(self.gamma_neg, log_p)), log_not_p)
        shifted = ops.relu(ops.subtract(ops.sigmoid(x), self.clip))
        log_not_shifted = ops.log(ops.minimum(ops.add(ops.sigmoid(ops.negative(x)), self.clip), 1.0))
        # shifted^gn where shifted > 0, else 0, with a finite gradient where shifted is 0 (gn < 1 included)
        inside = ops.greater(shifted, 0.0)
        safe = ops.where(inside, shifted, ops.ones_like(shifted))
        weight = ops.where(inside, ops.power(safe, self.gamma_neg), ops.zeros_like(shifted))
        return positive, ops.multiply(weight, log_not_shifted)

    def get_config(self):
        return {**super().get_config(), "gamma_neg": self.gamma_neg, "gamma_pos": self.gamma_pos, "clip": self.clip}


KERAS_LOSSES = {"bce": WeightedBCEWithLogits, "focal": FocalLossWithLogits, "asl": AsymmetricLossWithLogits}


def training_loss(config, pos_weight=None) -> keras.losses.Loss:
    """The Keras loss of a TrainConfig (``config.loss`` with its parameters); ``pos_weight`` (one per label, from
    ``--weighted-loss``) multiplies the positive term, None: unweighted."""
    return KERAS_LOSSES[config.loss](pos_weight=pos_weight, **losses.loss_parameters(config))
