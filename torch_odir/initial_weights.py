"""Starting weights of a DualNet from ``odir_core.model.initial_weights`` (the same numbers keras_odir gets)."""

from __future__ import annotations

import torch

from odir_core.model.backbone import BackboneSpec
from odir_core.model.initial_weights import HEAD_PREFIX, initial_state
from torch_odir.model import DualNet


def load_initial_weights(model: DualNet, backbone: BackboneSpec, seed: int, *, draw_backbone: bool) -> DualNet:
    """Give ``model`` (of backbone ``backbone``) the starting weights drawn from ``seed``: its head's, and with
    ``draw_backbone`` (random, not pretrained, backbone) its backbone's too. Returns ``model``."""
    shapes = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    state = {key: torch.from_numpy(value)
             for key, value in initial_state(shapes, backbone, seed, draw_backbone=draw_backbone).items()}
    if draw_backbone:
        model.load_state_dict(state)
    else:
        model.head.load_state_dict({key[len(HEAD_PREFIX):]: value for key, value in state.items()})
    return model
