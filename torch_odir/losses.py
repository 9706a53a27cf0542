"""The training losses on logits as torch modules: the focal loss and the asymmetric loss (formulas:
:mod:`odir_core.training.losses`), and :func:`training_loss`, the loss of a training config (BCE is torch's own
``BCEWithLogitsLoss``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from odir_core.training import losses
from odir_core.training.config import checked_parameter


class _FocusedLossWithLogits(nn.Module):
    """A loss ``-(w y positive + (1 - y) negative)`` per element, from the terms ``_terms(x) -> (positive,
    negative)`` of a subclass, averaged over batch and labels; ``w``: the label's ``pos_weight`` (None: 1), a
    buffer, so it moves with the module."""

    def __init__(self, pos_weight: torch.Tensor | None = None):
        super().__init__()
        self.register_buffer("pos_weight", None if pos_weight is None else torch.as_tensor(pos_weight))

    def _terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        y = targets.to(logits.dtype)
        positive, negative = self._terms(logits)
        if self.pos_weight is not None:
            positive = self.pos_weight.to(logits.dtype) * positive
        return -(y * positive + (1 - y) * negative).mean()


class FocalLossWithLogits(_FocusedLossWithLogits):
    """Lin et al.'s focal loss, ``-(w y a (1 - p)^g log p + (1 - y) (1 - a) p^g log(1 - p))`` with ``p =
    sigmoid(x)``, mean over batch and labels; ``alpha = -1``: no ``a`` / ``1 - a`` factors. Without ``pos_weight``,
    ``torchvision.ops.sigmoid_focal_loss(reduction="mean")`` for 0/1 targets; the powers are written
    ``exp(g logsigmoid(...))`` rather than torchvision's ``(1 - p_t) ** g``, whose gradient is NaN where a float32
    sigmoid saturates and ``g < 1``."""

    def __init__(self, gamma: float = losses.FOCAL_GAMMA, alpha: float = losses.FOCAL_ALPHA,
                 pos_weight: torch.Tensor | None = None):
        super().__init__(pos_weight)
        owner = type(self).__name__
        self.gamma = checked_parameter(gamma, "focal_gamma", owner, "gamma")
        self.alpha = checked_parameter(alpha, "focal_alpha", owner, "alpha")

    def _terms(self, x):
        log_p, log_not_p = F.logsigmoid(x), F.logsigmoid(-x)
        positive = torch.exp(self.gamma * log_not_p) * log_p
        negative = torch.exp(self.gamma * log_p) * log_not_p
        if self.alpha >= 0:
            positive, negative = self.alpha * positive, (1 - self.alpha) * negative
        return positive, negative


class AsymmetricLossWithLogits(_FocusedLossWithLogits):
    """Ridnik et al.'s asymmetric loss, ``-(w y (1 - p)^gp log p + (1 - y) pm^gn log(1 - pm))`` with ``p =
    sigmoid(x)`` and ``pm = max(p - clip, 0)``, mean over batch and labels (the official ``AsymmetricLoss`` returns
    the sum, clamps probabilities at ``eps`` inside the logs and can detach the focusing weights; here every term
    keeps its gradient and log-sigmoids keep it finite)."""

    def __init__(self, gamma_neg: float = losses.ASL_GAMMA_NEG, gamma_pos: float = losses.ASL_GAMMA_POS,
                 clip: float = losses.ASL_CLIP, pos_weight: torch.Tensor | None = None):
        super().__init__(pos_weight)
        owner = type(self).__name__
        self.gamma_neg = checked_parameter(gamma_neg, "asl_gamma_neg", owner, "gamma_neg")
        self.gamma_pos = checked_parameter(gamma_pos, "asl_gamma_pos", owner, "gamma_pos")
        self.clip = checked_parameter(clip, "asl_clip", owner, "clip")

    def _terms(self, x):
        log_p, log_not_p = F.logsigmoid(x), F.logsigmoid(-x)
        positive = torch.exp(self.gamma_pos * log_not_p) * log_p
        if self.clip == 0:
            return positive, torch.exp(self.gamma_neg * log_p) * log_not_p
        shifted = torch.relu(torch.sigmoid(x) - self.clip)
        log_not_shifted = torch.log(torch.clamp(torch.sigmoid(-x) + self.clip, max=1.0))
        inside = shifted > 0  # shifted^gn, 0 where shifted is 0, with a finite gradient there
        weight = torch.where(inside, torch.where(inside, shifted, 1.0).pow(self.gamma_neg), 0.0)
        return positive, weight * log_not_shifted


def training_loss(config, pos_weight: torch.Tensor | None = None) -> nn.Module:
    """The loss module of a TrainConfig (``config.loss`` with its parameters); ``pos_weight`` (one per label, from
    ``--weighted-loss``) multiplies the positive term, None: unweighted."""
    if config.loss == "bce":
        return nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    module = FocalLossWithLogits if config.loss == "focal" else AsymmetricLossWithLogits
    return module(pos_weight=pos_weight, **losses.loss_parameters(config))
