"""The Keras builders of the backbone families, one module each (``odir_core.model.families`` holds their
specs): ``BUILDERS[spec.family](spec, input_shape, data_format=..., name=...)`` builds backbone ``spec``."""

from __future__ import annotations

from collections.abc import Callable

import keras

from keras_odir.families import convnext, densenet, efficientnet, resnet, vit

BUILDERS: dict[str, Callable[..., keras.Model]] = {
    "resnet": resnet.build_backbone,
    "densenet": densenet.build_backbone,
    "efficientnet": efficientnet.build_backbone,
    "convnext": convnext.build_backbone,
    "vit": vit.build_backbone,
}
