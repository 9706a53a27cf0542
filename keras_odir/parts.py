"""The named parts of a keras_odir dual model, and the one accessor that returns them.

A dual model (``keras_odir.model.build_dual_model``) is ``{"left", "right"}`` -> ``backbone``
(one sub-model shared by both eyes, ending in the global pooling layer ``avgpool``) ->
``features`` (the [left, right] concatenation) -> ``head`` (a sub-model on the features) -> logits.
With a head on feature maps (``scm``, ``mldecoder``) the backbone ends at its last feature map, before the pooling,
and ``features`` concatenates both eyes' maps on channels.
"""

from __future__ import annotations

from typing import NamedTuple

import keras

BACKBONE = "backbone"  # the shared backbone sub-model
FEATURES = "features"  # the Concatenate layer of [left, right] pooled features
HEAD = "head"  # the head sub-model, input named "features"
POOL = "avgpool"  # the backbone's global average pooling; its input is the last feature map (Grad-CAM)


class DualParts(NamedTuple):
    """The parts of a dual model, each a layer of it (weights shared with the model)."""

    backbone: keras.Model
    features: keras.layers.Layer
    head: keras.Model

    @property
    def uses_maps(self) -> bool:
        """Whether the head works on feature maps (the backbone then ends before its pooling)."""
        return len(self.head.inputs[0].shape) == 4

    @property
    def pool(self) -> keras.layers.Layer:
        """The backbone's global pooling layer (a backbone that ends in it: ``not uses_maps``)."""
        return self.backbone.get_layer(POOL)

    def pooling(self) -> keras.Model:
        """The backbone from its last feature map to its features: the global pooling and what follows it
        (ConvNeXt's and RETFound's norm); a backbone that ends in the pooling: ``not uses_maps``."""
        return keras.Model(self.pool.input, self.backbone.output, name="pooling")

    def join(self, left_map, right_map):
        """What the head takes from both eyes' last feature maps: their pooled features, or the maps,
        concatenated [left, right] on channels."""
        if self.uses_maps:
            return keras.ops.concatenate([left_map, right_map], axis=-1)
        pooling = self.pooling()
        return keras.ops.concatenate([pooling(left_map), pooling(right_map)], axis=-1)

    def feature_model(self, model: keras.Model) -> keras.Model:
        """``model`` up to the concatenated [left, right] features, for inference: both eyes go through the
        backbone as one batch (exact in inference mode, where each image is normalised on its own)."""
        inputs = {name: keras.Input(shape=tensor.shape[1:], name=name) for name, tensor in model.input.items()}
        both = self.backbone(keras.ops.concatenate([inputs["left"], inputs["right"]], axis=0))
        left, right = keras.ops.split(both, 2, axis=0)
        return keras.Model(inputs, keras.ops.concatenate([left, right], axis=-1), name=FEATURES)

    def inference_model(self, model: keras.Model) -> keras.Model:
        """``model`` for inference only (``predict``), both eyes through the backbone as one batch; shares
        every layer and weight with ``model``. Not for training: BatchNorm would pool both eyes' statistics."""
        features = self.feature_model(model)
        return keras.Model(features.input, self.head(features.output), name=f"{model.name}_inference")

    def feature_map_model(self) -> keras.Model:
        """The backbone up to its last feature map (the input of the global pooling)."""
        if self.uses_maps:
            return self.backbone
        return keras.Model(self.backbone.inputs[0], self.pool.input, name="feature_map")


def is_dual_model(model: keras.Model) -> bool:
    """Whether ``model`` has the parts of a dual model."""
    names = {layer.name for layer in model.layers}
    return {BACKBONE, FEATURES, HEAD} <= names


def dual_parts(model: keras.Model) -> DualParts:
    """The backbone, feature concatenation and head of a dual model."""
    if not is_dual_model(model):
        raise ValueError(f"{model.name!r} is not a keras_odir dual model (no {BACKBONE}/{FEATURES}/{HEAD} parts)")
    return DualParts(model.get_layer(BACKBONE), model.get_layer(FEATURES), model.get_layer(HEAD))
