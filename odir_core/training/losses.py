"""The training losses both trainers offer (``--loss``): their names, their parameters' defaults, and their formulas
in numpy float64 (the validation loss of both trainers, and the training loss keras_odir reports when several
processes train).

Per element, with logit ``x``, target ``y`` (0 or 1), ``p = sigmoid(x)`` and the label's positive weight ``w``
(``--weighted-loss``: negatives/positives on the training split; 1 without it), each loss is the mean over samples
and labels of:

- ``bce``: ``-(w y log p + (1 - y) log(1 - p))``, torch's ``BCEWithLogitsLoss(pos_weight=w)``.
- ``focal`` (Lin et al., ICCV 2017): ``-(w y a (1 - p)^g log p + (1 - y) (1 - a) p^g log(1 - p))``, with
  ``g = focal_gamma`` and ``a = focal_alpha``; ``focal_alpha = -1`` leaves out the ``a`` and ``1 - a`` factors
  (torchvision's convention). ``w = 1``: ``torchvision.ops.sigmoid_focal_loss(reduction="mean")``.
- ``asl`` (Ridnik, Ben-Baruch et al., ICCV 2021): ``-(w y (1 - p)^gp log p + (1 - y) pm^gn log(1 - pm))`` with
  ``pm = max(p - m, 0)``, ``gp = asl_gamma_pos``, ``gn = asl_gamma_neg`` and ``m = asl_clip`` (the probability
  margin).

Each is computed from log-sigmoids (``log p = -log(1 + exp(-x))``, ``log(1 - p) = -log(1 + exp(x))``) and powers
written as ``exp(g log q)``, so it is finite for any finite logit.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

LOSSES = ("bce", "focal", "asl")
FOCAL_GAMMA = 2.0  # Lin et al.'s best setting, torchvision's default
FOCAL_ALPHA = 0.25  # likewise; -1: no alpha weighting
NO_ALPHA = -1.0
# The official ASL code trains with gamma_neg 4, gamma_pos 0 and clip 0.05 (its AsymmetricLoss class defaults to
# gamma_pos 1); the paper's experiments use the same (4, 0, 0.05).
ASL_GAMMA_NEG = 4.0
ASL_GAMMA_POS = 0.0
ASL_CLIP = 0.05
# The focusing exponents reach at most this: far above any value the papers use (0 to 5), and a float32
# exponent stays finite.
MAX_GAMMA = 100.0


def loss_parameters(config) -> dict[str, float]:
    """Keyword arguments of ``config.loss`` from a TrainConfig: ``{}`` (bce), ``gamma, alpha`` (focal) or
    ``gamma_neg, gamma_pos, clip`` (asl), the names every implementation of the losses takes."""
    if config.loss == "focal":
        return {"gamma": config.focal_gamma, "alpha": config.focal_alpha}
    if config.loss == "asl":
        return {"gamma_neg": config.asl_gamma_neg, "gamma_pos": config.asl_gamma_pos, "clip": config.asl_clip}
    return {}


def loss_summary(config) -> str:
    """The loss of ``config`` in a few words, e.g. ``weighted BCE``, ``focal loss (gamma 2, alpha 0.25)``."""
    weighted = "weighted" if config.weighted_loss else "plain"
    if config.loss == "bce":
        return f"{weighted} BCE"
    params = ", ".join(f"{name} {value:g}" for name, value in loss_parameters(config).items())
    name = "focal loss" if config.loss == "focal" else "asymmetric loss"
    return f"{name} ({params}{', class-weighted' if config.weighted_loss else ''})"


def _log_sigmoids(logits) -> tuple[np.ndarray, np.ndarray]:
    """(log p, log(1 - p)) of float64 logits, finite for any finite logit."""
    x = np.asarray(logits, dtype=np.float64)
    return -np.logaddexp(0.0, -x), -np.logaddexp(0.0, x)


def _mean(targets, positive, negative, pos_weight) -> float:
    """The mean over samples and labels of ``-(w y positive + (1 - y) negative)``."""
    y = np.asarray(targets, dtype=np.float64)
    w = 1.0 if pos_weight is None else np.asarray(pos_weight, dtype=np.float64)
    return float(np.mean(-(w * y * positive + (1.0 - y) * negative)))


def bce_with_logits(logits, targets, pos_weight=None) -> float:
    """Binary cross-entropy on logits, mean over samples and labels (torch's formula); ``pos_weight`` (one
    per label) weights the positive term as ``BCEWithLogitsLoss(pos_weight=...)``, None: unweighted."""
    x = np.asarray(logits, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    if pos_weight is None:
        return float(np.mean(np.logaddexp(0.0, x) - y * x))
    w = np.asarray(pos_weight, dtype=np.float64)
    return float(np.mean(w * y * np.logaddexp(0.0, -x) + (1.0 - y) * np.logaddexp(0.0, x)))


def focal_loss_with_logits(logits, targets, gamma: float = FOCAL_GAMMA, alpha: float = FOCAL_ALPHA,
                           pos_weight=None) -> float:
    """The focal loss on logits (see the module), mean over samples and labels; ``alpha < 0``: no alpha weighting,
    ``pos_weight`` (one per label) multiplies the positive term, None: unweighted."""
    log_p, log_not_p = _log_sigmoids(logits)
    positive = np.exp(gamma * log_not_p) * log_p
    negative = np.exp(gamma * log_p) * log_not_p
    if alpha >= 0:
        positive, negative = alpha * positive, (1.0 - alpha) * negative
    return _mean(targets, positive, negative, pos_weight)


def asymmetric_loss_with_logits(logits, targets, gamma_neg: float = ASL_GAMMA_NEG, gamma_pos: float = ASL_GAMMA_POS,
                                clip: float = ASL_CLIP, pos_weight=None) -> float:
    """The asymmetric loss on logits (see the module), mean over samples and labels; ``pos_weight`` (one per label)
    multiplies the positive term, None: unweighted."""
    log_p, log_not_p = _log_sigmoids(logits)
    positive = np.exp(gamma_pos * log_not_p) * log_p
    if clip > 0:  # 1 - pm = min(1 - p + m, 1), at least m: its log is finite
        shifted = np.maximum(np.exp(log_p) - clip, 0.0)
        log_not_shifted = np.log(np.minimum(np.exp(log_not_p) + clip, 1.0))
        negative = shifted ** gamma_neg * log_not_shifted
    else:
        negative = np.exp(gamma_neg * log_p) * log_not_p
    return _mean(targets, positive, negative, pos_weight)


NUMPY_LOSSES: dict[str, Callable[..., float]] = {
    "bce": bce_with_logits, "focal": focal_loss_with_logits, "asl": asymmetric_loss_with_logits,
}


def numpy_loss(config, pos_weight=None) -> Callable[[np.ndarray, np.ndarray], float]:
    """``loss(logits, targets) -> float``: ``config.loss`` with its parameters, in float64; ``pos_weight``
    (one per label) weights the positive term, None: unweighted (the validation loss)."""
    function, params = NUMPY_LOSSES[config.loss], loss_parameters(config)

    def loss(logits, targets) -> float:
        return function(logits, targets, pos_weight=pos_weight, **params)

    return loss
