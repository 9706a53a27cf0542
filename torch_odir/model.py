"""The dual-eye ResNet50 in PyTorch: torchvision's resnet50 without ``fc``, shared by both eyes, plus a head."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import torch
import torchvision
from torch import nn

from odir_core.checkpoints import (
    IMAGENET_CHECKPOINTS,
    CheckpointNotFoundError,
    find_imagenet_checkpoint,
    missing_checkpoint_message,
    torch_hub_checkpoint_dir,
)
from odir_core.labels import NUM_LABELS

HEADS = ("v0", "v1", "v2")
FEATURES = 2048


def build_head(head: str, in_features: int = 2 * FEATURES) -> nn.Sequential:
    """The classification head; its Sequential indices are the Keras layer names ``head_<i>``."""
    if head == "v0":
        layers = [nn.Linear(in_features, NUM_LABELS)]
    elif head == "v1":
        layers = [nn.Dropout(0.2), nn.Linear(in_features, NUM_LABELS)]
    elif head == "v2":
        layers = [
            nn.Linear(in_features, 128), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(128, 64), nn.ReLU(), nn.Dropout(0.5),
            nn.Linear(64, NUM_LABELS),
        ]
    else:
        raise ValueError(f"Unknown head {head!r}; choose one of {', '.join(HEADS)}.")
    return nn.Sequential(*layers)


def load_imagenet_state_dict(path: str | os.PathLike | None = None, *, download: bool = True,
                             timeout: float = 10.0) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet ResNet50 state_dict (with ``fc``), from ``path`` or the torch hub folder.

    Without a file on disk it is downloaded into the torch hub folder when ``download`` is
    true and the network answers within ``timeout`` seconds; otherwise a
    ``CheckpointNotFoundError`` names the file and where to put it.
    """
    found = find_imagenet_checkpoint(path)
    if found is None:
        if not download or not _reachable("download.pytorch.org", timeout):
            raise CheckpointNotFoundError(missing_checkpoint_message())
        url = next(iter(IMAGENET_CHECKPOINTS.values()))
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(timeout)
        try:
            return torch.hub.load_state_dict_from_url(
                url, model_dir=str(torch_hub_checkpoint_dir()), map_location="cpu", progress=True)
        except OSError as error:
            raise CheckpointNotFoundError(f"{missing_checkpoint_message()} ({error})") from error
        finally:
            socket.setdefaulttimeout(previous)
    try:
        return torch.load(found, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated download or a file that is not a checkpoint
        raise CheckpointNotFoundError(
            f"{found} is not a readable torch checkpoint ({error}); delete it and download it again."
        ) from error


def _reachable(host: str, timeout: float) -> bool:
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def backbone_state(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A torchvision resnet50 state_dict without its ImageNet classifier (``fc.*``)."""
    return {k: v for k, v in state_dict.items() if not k.startswith("fc.")}


class DualResNet50(nn.Module):
    """Both eyes through one torchvision resnet50 (``fc = Identity``), features [left, right] -> head -> logits.

    ``weights``: None (random), ``"imagenet"`` (torch hub folder) or a checkpoint path.
    ``freeze_backbone``: backbone parameters get no gradient and the backbone stays in eval
    mode (BatchNorm uses its running statistics) even after ``model.train()``.
    """

    def __init__(self, head: str = "v0", freeze_backbone: bool = False,
                 weights: str | os.PathLike | None = None):
        super().__init__()
        self.head_name = head
        self.freeze_backbone = freeze_backbone
        self.backbone = torchvision.models.resnet50(weights=None)
        self.backbone.fc = nn.Identity()
        self.head = build_head(head)
        if weights is not None:
            source = None if weights == "imagenet" else weights
            self.backbone.load_state_dict(backbone_state(load_imagenet_state_dict(source)))
        if freeze_backbone:
            self.backbone.requires_grad_(False)
            self.backbone.eval()

    def train(self, mode: bool = True) -> DualResNet50:
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()
        return self

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        features = torch.cat([self.backbone(left), self.backbone(right)], dim=1)
        return self.head(features)


def infer_head(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Which head (v0/v1/v2) a DualResNet50 state_dict carries, from its ``head.*`` keys."""
    indices = sorted({int(k.split(".")[1]) for k in state_dict if k.startswith("head.")})
    for head in HEADS:
        expected = sorted({int(k.split(".")[0]) for k in build_head(head).state_dict()})
        if indices == expected:
            return head
    raise ValueError(f"Not a DualResNet50 state_dict: head layer indices {indices} match no head of {HEADS}.")


__all__ = ["HEADS", "DualResNet50", "build_head", "load_imagenet_state_dict", "backbone_state",
           "infer_head", "CheckpointNotFoundError"]
