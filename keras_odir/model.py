"""The dual-eye model: one shared ResNet50 for both eyes, features [left, right] -> head -> 8 logits."""

from __future__ import annotations

import math
import os

import keras
from keras import layers

from keras_odir.resnet import FEATURES, build_resnet50
from odir_core.labels import NUM_LABELS

HEADS = ("v0", "v1", "v2")


def _dense(units, fan_in, name):
    # torch.nn.Linear's init: weight and bias uniform in +-1/sqrt(fan_in)
    bound = 1.0 / math.sqrt(fan_in)
    return layers.Dense(units, name=name,
                        kernel_initializer=keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform"),
                        bias_initializer=keras.initializers.RandomUniform(-bound, bound))


def head_layers(head: str, in_features: int = 2 * FEATURES) -> list[keras.layers.Layer]:
    """The head's layers, named ``head_<i>`` after the index of the matching layer in torch_odir's head."""
    if head == "v0":
        return [_dense(NUM_LABELS, in_features, "head_0")]
    if head == "v1":
        return [layers.Dropout(0.2, name="head_0"), _dense(NUM_LABELS, in_features, "head_1")]
    if head == "v2":
        return [
            _dense(128, in_features, "head_0"), layers.ReLU(name="head_1"), layers.Dropout(0.5, name="head_2"),
            _dense(64, 128, "head_3"), layers.ReLU(name="head_4"), layers.Dropout(0.5, name="head_5"),
            _dense(NUM_LABELS, 64, "head_6"),
        ]
    raise ValueError(f"Unknown head {head!r}; choose one of {', '.join(HEADS)}.")


def build_dual_model(head: str = "v0", freeze_backbone: bool = False, image_size: int | None = None,
                     weights: str | os.PathLike | None = None, *, data_format: str | None = None) -> keras.Model:
    """Dual-eye ResNet50: inputs ``{"left", "right"}`` (ImageNet-normalised float32) -> 8 logits.

    ``image_size``: fixed square input size, or None for any size. ``weights``: backbone
    weights, None / ``"imagenet"`` / a torchvision checkpoint path. ``freeze_backbone``: the
    backbone gets ``trainable = False``, so it also runs in inference mode (BatchNorm uses
    its moving statistics) whatever ``training`` the model is called with.
    ``data_format``: ``channels_last`` (NHWC, default) or ``channels_first`` (NCHW).
    """
    data_format = data_format or keras.config.image_data_format()
    shape = (image_size, image_size, 3) if data_format == "channels_last" else (3, image_size, image_size)
    layer_list = head_layers(head)
    left = keras.Input(shape=shape, name="left")
    right = keras.Input(shape=shape, name="right")
    backbone = build_resnet50(shape, data_format=data_format, name="backbone", weights=weights)
    if freeze_backbone:
        backbone.trainable = False
    x = layers.Concatenate(name="features")([backbone(left), backbone(right)])
    for layer in layer_list:
        x = layer(x)
    return keras.Model({"left": left, "right": right}, x, name=f"dual_resnet50_{head}")


def backbone_of(model: keras.Model) -> keras.Model:
    """The shared ResNet50 inside a dual model."""
    return model.get_layer("backbone")
