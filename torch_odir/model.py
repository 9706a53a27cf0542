"""The dual-eye model in PyTorch, built from ``odir_core.model.model_spec``: one torchvision backbone (its
classifier replaced by ``Identity``) shared by both eyes, features [left, right] -> head -> logits.

Its state_dict is ``backbone.`` + the torchvision model's own keys, plus ``head.<i>.*``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torchvision
from torch import nn

from odir_core.model.checkpoints import SAFE_GLOBALS, dual_state_dict, load_imagenet_backbone_state, read_checkpoint
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
from torch_odir.mldecoder import MLDecoder as MLDecoderModule
from torch_odir.vit import token_map, vision_transformer

# families built from their spec rather than by torchvision's constructor of the name (same modules and keys)
CONSTRUCTORS = {"vit": vision_transformer}


def torch_load(path):
    """What a torch checkpoint file holds (tensors on the CPU, no arbitrary objects): ``torch.load``."""
    with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
        return torch.load(path, map_location="cpu", weights_only=True)


class CorrelationFusion(nn.Module):
    """``odir_core.model.model_spec.CrossEyeCorrelation``: left and right feature maps (B, C, H, W) -> (B, 2C)."""

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        left, right = left.flatten(2).transpose(1, 2), right.flatten(2).transpose(1, 2)  # (B, N, C)
        scores = left @ right.transpose(1, 2) * left.shape[-1] ** -0.5  # (B, N, M)
        left_agg = torch.softmax(scores, dim=-1) @ right
        right_agg = torch.softmax(scores.transpose(1, 2), dim=-1) @ left
        return torch.cat([(left + left_agg).mean(1), (right + right_agg).mean(1)], dim=1)


class MapHead(nn.Sequential):
    """A head on both eyes' feature maps: its first module fuses them into [left, right] features."""

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = self[0](left, right)
        for module in list(self)[1:]:
            x = module(x)
        return x


def build_head(head: HeadSpec, in_features: int) -> nn.Sequential:
    """Head ``head`` (a ``HeadSpec`` of ``odir_core.model.model_spec``); its Sequential indices are Keras'
    ``head_<i>``.

    ``in_features``: the width of the [left, right] features (twice the backbone's).
    """
    modules, width = [], in_features
    for layer in head.layers:
        if isinstance(layer, Linear):
            modules.append(nn.Linear(width, layer.units))
            width = layer.units
        elif isinstance(layer, ReLU):
            modules.append(nn.ReLU())
        elif isinstance(layer, Dropout):
            modules.append(nn.Dropout(layer.rate))
        elif isinstance(layer, CrossEyeCorrelation):
            modules.append(CorrelationFusion())
        elif isinstance(layer, MLDecoder):  # both eyes' maps of in_features // 2 channels each
            modules.append(MLDecoderModule(layer, in_features // 2))
            width = layer.units
    return (MapHead if head.uses_maps else nn.Sequential)(*modules)


def build_backbone(backbone: BackboneSpec | str = DEFAULT_BACKBONE,
                   weights: str | os.PathLike | None = None) -> nn.Module:
    """torchvision's constructor of ``backbone`` (its spec, or a registered name) with its classifier replaced
    by ``Identity``.

    ``weights``: None (random), ``"imagenet"`` (torch hub folder, downloaded when missing) or the
    path of a torchvision checkpoint file (or a folder holding one).
    """
    spec = backbone_spec(backbone)
    constructor = CONSTRUCTORS.get(spec.family)
    model = constructor(spec) if constructor else getattr(torchvision.models, spec.torchvision)(weights=None)
    parent, _, name = spec.classifier.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, nn.Identity())
    if weights is not None:
        state = load_imagenet_backbone_state(None if weights == "imagenet" else weights, spec, torch_load)
        model.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})  # resampled ones are numpy
    return model


class DualNet(nn.Module):
    """Both eyes through one backbone, features [left, right] -> head -> logits.

    ``backbone``/``head``: specs of ``odir_core.model.model_spec`` (``BackboneSpec``, ``HeadSpec``) or
    registered names, resolved here once (kept as ``spec`` and ``head_spec``). ``weights``: backbone
    weights, None (random), ``"imagenet"`` or a torchvision checkpoint path. ``freeze_backbone``: backbone
    parameters get no gradient and the backbone stays in eval mode (BatchNorm uses its running statistics)
    even after ``model.train()``. Weights are in channels_last memory format (NHWC in memory, the layout
    oneDNN and cuDNN convolve fastest); inputs in either format give the same result.
    """

    def __init__(self, backbone: BackboneSpec | str = DEFAULT_BACKBONE, head: HeadSpec | str = "v0",
                 freeze_backbone: bool = False, weights: str | os.PathLike | None = None):
        super().__init__()
        self.spec = backbone_spec(backbone)
        self.head_spec = head_spec(head)
        self.freeze_backbone = freeze_backbone
        self.backbone = build_backbone(self.spec, weights)
        self.head = build_head(self.head_spec, 2 * self.spec.features)
        if freeze_backbone:
            self.backbone.requires_grad_(False)
            self.backbone.eval()
        self.to(memory_format=torch.channels_last)

    def train(self, mode: bool = True) -> DualNet:
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def features(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """The concatenated [left, right] pooled backbone features.

        A backbone in training mode sees each eye as its own batch (BatchNorm statistics per eye, as in
        the study); in eval mode, where every image is normalised on its own, both go through as one batch.
        """
        return torch.cat(self._per_eye(self.backbone, left, right), dim=1)

    def feature_maps(self, images: torch.Tensor) -> torch.Tensor:
        """The backbone's last feature map (the input of its pooling; ``spec.gradcam_stage``'s output; a Vision
        Transformer's patch tokens after ``encoder.ln`` (RETFound's after the last block) on their grid; normalised
        at every position by ``spec.map_norm`` where the spec has one)."""
        found: list[torch.Tensor] = []
        stage = self.backbone.get_submodule(self.spec.gradcam_stage)
        hook = stage.register_forward_hook(lambda module, inputs, output: found.append(output))
        try:
            self.backbone(images)
        finally:
            hook.remove()
        if self.spec.patch_size:  # the norm per token (RETFound's fc_norm), then the patch tokens on their grid
            tokens = self.backbone.get_submodule(self.spec.map_norm)(found[0]) if self.spec.map_norm else found[0]
            return token_map(tokens, images, self.spec.patch_size)
        maps = torch.relu(found[0]) if self.spec.map_relu else found[0]
        return self.backbone.get_submodule(self.spec.map_norm)(maps) if self.spec.map_norm else maps

    def _per_eye(self, fn, left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.backbone.training:
            return fn(left), fn(right)
        return fn(torch.cat([left, right])).chunk(2)

    def head_inputs(self, left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """What the head takes: both eyes' feature maps for a head on maps, else the [left, right] features."""
        if isinstance(self.head, MapHead):
            return self._per_eye(self.feature_maps, left, right)
        return (self.features(left, right),)

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        return self.head(*self.head_inputs(left, right))


class DualResNet50(DualNet):
    """The study's model: :class:`DualNet` with the ``resnet50`` backbone."""

    def __init__(self, head: HeadSpec | str = "v0", freeze_backbone: bool = False,
                 weights: str | os.PathLike | None = None):
        super().__init__("resnet50", head, freeze_backbone=freeze_backbone, weights=weights)


def read_torch_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The state_dict in a ``.pth``/``.pt`` file, unwrapped (see ``odir_core.model.checkpoints``)."""
    return read_checkpoint(path, torch_load)


def dual_model_from_state(state: Mapping[str, torch.Tensor], *, freeze_backbone: bool = False) -> DualNet:
    """A :class:`DualNet` built for a dual-model state_dict (backbone and head read from its keys) holding
    its weights; torch_odir's layout or the study's own (``classifier.*``)."""
    state = dual_state_dict(state)
    backbone, head = infer_architecture(state)
    model = DualNet(backbone, head, freeze_backbone=freeze_backbone)
    model.load_state_dict(state)
    return model


__all__ = ["DualNet", "DualResNet50", "build_backbone", "build_head", "dual_model_from_state", "read_torch_state",
           "torch_load"]
