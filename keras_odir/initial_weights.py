"""Starting weights of a Keras dual model from ``odir_core.model.initial_weights`` (the same numbers torch_odir gets)."""

from __future__ import annotations

import keras
import numpy as np

from keras_odir.parts import dual_parts
from keras_odir.weights import keras_to_numpy_state, torch_to_keras_state
from odir_core.model.backbone import BackboneSpec
from odir_core.model.initial_weights import initial_state


def load_initial_weights(model: keras.Model, backbone: BackboneSpec, seed: int, *, draw_backbone: bool) -> keras.Model:
    """Give dual model ``model`` (of backbone ``backbone``) the starting weights drawn from ``seed``: its head's,
    and with ``draw_backbone`` (random, not pretrained, backbone) its backbone's too. Returns ``model``."""
    shapes = {key: np.shape(value) for key, value in keras_to_numpy_state(model).items()}
    state = initial_state(shapes, backbone, seed, draw_backbone=draw_backbone)
    torch_to_keras_state(model if draw_backbone else dual_parts(model).head, state,
                         source=f"initial weights of seed {seed}")
    return model
