"""The dual-eye model in Keras, built from ``odir_core.model.model_spec``: one backbone shared by both eyes,
features [left, right] -> head -> 8 logits. Its parts: ``keras_odir.parts.dual_parts(model)``."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

import keras
from keras import layers

import keras_odir.initializers as initializers
import keras_odir.layers  # noqa: F401  (registers the custom layers a saved model refers to)
from keras_odir.correlation import CorrelationFusion
from keras_odir.families import BUILDERS
from keras_odir.families.vit import PATCH_GRID, PatchGrid
from keras_odir.mldecoder import MLDecoder as MLDecoderLayer
from keras_odir.parts import BACKBONE, FEATURES, HEAD, POOL
from keras_odir.weights import load_imagenet_weights, read_torch_state, torch_to_keras_state
from odir_core.model.backbone import keras_layer_name
from odir_core.model.checkpoints import dual_state_dict
from odir_core.model.model_spec import (
    DEFAULT_BACKBONE,
    BackboneSpec,
    CrossEyeCorrelation,
    Dropout,
    HeadSpec,
    Linear,
    MLDecoder,
    ReLU,
    backbone_spec,
    head_spec,
    infer_architecture,
)


def _dense(units, fan_in, name, dtype=None):
    # torch.nn.Linear's init: weight and bias uniform in +-1/sqrt(fan_in)
    bound = 1.0 / math.sqrt(fan_in)
    return layers.Dense(units, name=name, dtype=dtype,
                        kernel_initializer=initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform"),
                        bias_initializer=initializers.RandomUniform(-bound, bound))


def build_head(head: HeadSpec, in_features: int) -> keras.Model:
    """Head ``head`` (a ``HeadSpec`` of ``odir_core.model.model_spec``) as a model on the features (input
    ``features``).

    Its i-th layer is named ``head_<i>``, after torch's ``head.<i>``. The last layer computes in the
    policy's variable dtype, so logits (and the loss) are float32 under a mixed-precision policy too
    (and float64 under a float64 one). A head on feature maps (``scm``, ``mldecoder``) takes both eyes' maps
    concatenated on channels, (H, W, ``in_features``), channels_last.
    """
    inputs = keras.Input(shape=(None, None, in_features) if head.uses_maps else (in_features,), name=FEATURES)
    x, width = inputs, in_features
    logits_dtype = keras.config.dtype_policy().variable_dtype
    for i, layer in enumerate(head.layers):
        name = f"head_{i}"
        if isinstance(layer, CrossEyeCorrelation):
            x = CorrelationFusion(name=name, dtype=logits_dtype)(x)
        elif isinstance(layer, MLDecoder):
            x, width = MLDecoderLayer.from_spec(layer, name=name, dtype=logits_dtype)(x), layer.units
        elif isinstance(layer, Linear):
            dtype = logits_dtype if i == len(head.layers) - 1 else None
            x, width = _dense(layer.units, width, name, dtype)(x), layer.units
        elif isinstance(layer, ReLU):
            x = layers.ReLU(name=name)(x)
        elif isinstance(layer, Dropout):
            x = layers.Dropout(layer.rate, name=name)(x)
    return keras.Model(inputs, x, name=HEAD)


def build_backbone(backbone: BackboneSpec | str = DEFAULT_BACKBONE, input_shape=None, *,
                   data_format: str | None = None, weights: str | os.PathLike | None = None,
                   name: str = BACKBONE) -> keras.Model:
    """A backbone (its spec, or a registered name): images (normalised float32) -> pooled features.

    ``weights``: None (random, torchvision's initialisation), ``"imagenet"`` (torchvision's checkpoint
    from the torch hub folder) or the path of a torchvision checkpoint file (or a folder holding one).
    """
    spec = backbone_spec(backbone)
    model = BUILDERS[spec.family](spec, input_shape, data_format=data_format, name=name)
    if weights is not None:
        load_imagenet_weights(model, spec, None if weights == "imagenet" else weights)
    return model


def build_dual_model(backbone: BackboneSpec | str = DEFAULT_BACKBONE, head: HeadSpec | str = "v0", *,
                     freeze_backbone: bool = False, image_size: int | None = None,
                     weights: str | os.PathLike | None = None, data_format: str | None = None) -> keras.Model:
    """Dual-eye model: inputs ``{"left", "right"}`` (normalised float32) -> 8 logits.

    ``backbone``/``head``: specs of ``odir_core.model.model_spec`` (``BackboneSpec``, ``HeadSpec``) or
    registered names, resolved here once. ``image_size``: fixed square input size, or None for any size.
    ``weights``: backbone weights, None / ``"imagenet"`` / a torchvision checkpoint path.
    ``freeze_backbone``: the backbone gets ``trainable = False``, so it also runs in inference mode
    (BatchNorm uses its moving statistics) whatever ``training`` the model is called with.
    ``data_format``: ``channels_last`` (NHWC, default) or ``channels_first`` (NCHW; not with a head on
    feature maps). With a head on feature maps the ``backbone`` part ends at the last feature map, before
    its pooling (``parts.DualParts.uses_maps``).
    """
    spec, head = backbone_spec(backbone), head_spec(head)
    head_model = build_head(head, 2 * spec.features)
    data_format = data_format or keras.config.image_data_format()
    maps = head.uses_maps
    if maps and data_format != "channels_last":
        raise ValueError(f"head {head.name} works on channels_last feature maps; "
                         "build it with data_format='channels_last'")
    shape = (image_size, image_size, 3) if data_format == "channels_last" else (3, image_size, image_size)
    left = keras.Input(shape=shape, name="left")
    right = keras.Input(shape=shape, name="right")
    shared = build_backbone(spec, shape, data_format=data_format, weights=weights)
    if maps:  # the same layers up to the last feature map (normalised at every position where the spec says)
        feature_map = shared.get_layer(POOL).input
        if spec.patch_size:  # a Vision Transformer's tokens: its patch tokens on their grid
            feature_map = PatchGrid(name=PATCH_GRID)(feature_map)
        if spec.map_norm:
            feature_map = shared.get_layer(keras_layer_name(spec.map_norm))(feature_map)
        shared = keras.Model(shared.input, feature_map, name=BACKBONE)
    if freeze_backbone:
        shared.trainable = False
    features = layers.Concatenate(name=FEATURES)([shared(left), shared(right)])
    return keras.Model({"left": left, "right": right}, head_model(features), name=f"dual_{spec.name}_{head.name}")


def dual_model_from_state(state: Mapping, *, source: str = "state_dict", **build_kwargs) -> keras.Model:
    """A dual model built for a torch state_dict (backbone and head read from its keys) holding its weights.

    ``state``: torch_odir's layout or the study's (``classifier.*``); ``build_kwargs`` go to
    :func:`build_dual_model` (``freeze_backbone``, ``image_size``, ``data_format``).
    """
    state = dual_state_dict(state)
    model = build_dual_model(*infer_architecture(state), **build_kwargs)
    return torch_to_keras_state(model, state, source=source)


def load_dual_checkpoint(path: str | os.PathLike, **build_kwargs) -> keras.Model:
    """A dual model from a torch checkpoint file (torch_odir's best.pth, the study's .pth)."""
    return dual_model_from_state(read_torch_state(path), source=str(path), **build_kwargs)
