"""Where torchvision's ImageNet ResNet50 checkpoint lives on disk (framework-free).

Both packages load ImageNet weights from the same torchvision file; this module only
finds it (or says where to put it). Reading it needs torch and lives in ``torch_odir.model``.
"""

from __future__ import annotations

import os
from pathlib import Path

# torchvision's file names and URLs, preferred first (IMAGENET1K_V2, then IMAGENET1K_V1).
IMAGENET_CHECKPOINTS: dict[str, str] = {
    "resnet50-11ad3fa6.pth": "https://download.pytorch.org/models/resnet50-11ad3fa6.pth",
    "resnet50-0676ba61.pth": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
}


class CheckpointNotFoundError(FileNotFoundError):
    """No ImageNet checkpoint on disk and none could be downloaded."""


def torch_hub_checkpoint_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` with torch.hub's defaults (``$XDG_CACHE_HOME/torch``, ``~/.cache/torch``)."""
    default_cache = os.getenv("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    torch_home = os.getenv("TORCH_HOME", os.path.join(default_cache, "torch"))
    return Path(os.path.expanduser(torch_home)) / "hub" / "checkpoints"


def find_imagenet_checkpoint(path: str | os.PathLike | None = None) -> Path | None:
    """The ImageNet checkpoint to load, or None when none is on disk.

    ``path`` may be the checkpoint file itself or a folder holding one of
    ``IMAGENET_CHECKPOINTS``; without it the torch hub checkpoint folder is searched.
    An explicit path that does not exist raises ``CheckpointNotFoundError``.
    """
    if path is not None:
        path = Path(path).expanduser()
        if path.is_file():
            return path
        if not path.is_dir():
            raise CheckpointNotFoundError(
                f"ImageNet checkpoint {path} does not exist; give the path of a torchvision "
                f"ResNet50 checkpoint ({' or '.join(IMAGENET_CHECKPOINTS)}) or a folder holding one."
            )
        folder = path
    else:
        folder = torch_hub_checkpoint_dir()
    for name in IMAGENET_CHECKPOINTS:
        if (folder / name).is_file():
            return folder / name
    if path is not None:
        raise CheckpointNotFoundError(missing_checkpoint_message(folder))
    return None


def missing_checkpoint_message(folder: Path | None = None) -> str:
    """One line saying which file to download and where to put it."""
    folder = folder or torch_hub_checkpoint_dir()
    name, url = next(iter(IMAGENET_CHECKPOINTS.items()))
    return (
        f"No ImageNet ResNet50 checkpoint found in {folder} and it could not be downloaded: "
        f"download {url} (or {list(IMAGENET_CHECKPOINTS)[1]}) and put it at {folder / name}, "
        f"or pass the file's path as weights=..."
    )
