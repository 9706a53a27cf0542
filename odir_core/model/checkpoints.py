"""Checkpoint files, framework-free: finding or downloading torchvision's ImageNet files, and
unwrapping whatever a ``.pth`` holds into the one state_dict layout both packages use.

Reading a ``.pth`` needs torch: each package passes its reader (``torch.load``) to
:func:`read_checkpoint`; everything about the file's layout is decided here, once.

Layouts read (:func:`unwrap_state_dict`, :func:`dual_state_dict`): a plain state_dict;
``{"state_dict": ...}`` / ``{"model_state_dict": ...}`` / ``{"model": ...}`` (training scripts,
torch_odir's best.pth); a ``module.`` prefix (DataParallel / DistributedDataParallel); and the
study's own files, ``classifier.*`` for the head (``classifier.weight`` for v0, a Sequential's
``classifier.<i>.*`` for v1/v2), which become ``head.*``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import urllib.request
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from odir_core.atomic import atomic_path
from odir_core.errors import InputError
from odir_core.model.families import vit
from odir_core.model.model_spec import BACKBONES, DEFAULT_BACKBONE, BackboneSpec, backbone_spec, infer_backbone

# The Python objects a checkpoint may hold beside tensors and plain containers, rebuilt as data by torch's
# weights_only reader (no code runs): the argparse Namespace that MAE-style training scripts (RETFound's) save as "args"
SAFE_GLOBALS = (argparse.Namespace,)

TORCH_SUFFIXES = (".pth", ".pt")  # torch checkpoint files
KERAS_SUFFIX = ".keras"  # keras_odir's saved models
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")  # where training scripts put the state_dict
DDP_PREFIX = "module."


class CheckpointError(InputError):
    """A checkpoint file that cannot be used (one line: which file, what is wrong, what to do)."""


class CheckpointNotFoundError(InputError, FileNotFoundError):
    """No ImageNet checkpoint on disk and none could be downloaded."""


def torch_hub_checkpoint_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` with torch.hub's defaults (``$XDG_CACHE_HOME/torch``, ``~/.cache/torch``)."""
    default_cache = os.getenv("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    torch_home = os.getenv("TORCH_HOME", os.path.join(default_cache, "torch"))
    return Path(os.path.expanduser(torch_home)) / "hub" / "checkpoints"


def find_imagenet_checkpoint(path: str | os.PathLike | None = None,
                             backbone: str | BackboneSpec = DEFAULT_BACKBONE) -> Path | None:
    """The ImageNet checkpoint of ``backbone`` on disk, or None when there is none.

    ``path`` may be the checkpoint file itself or a folder holding one of the backbone's
    torchvision files; without it the torch hub checkpoint folder is searched. An explicit path
    that does not exist, or a folder without the file, raises ``CheckpointNotFoundError``.
    """
    spec = backbone_spec(backbone)
    if path is not None:
        path = Path(path).expanduser()
        if path.is_file():
            return path
        if not path.is_dir():
            raise CheckpointNotFoundError(
                f"ImageNet checkpoint {path} does not exist; give the path of a torchvision {spec.name} "
                f"checkpoint ({' or '.join(spec.imagenet_checkpoints)}) or a folder holding one.")
        folder = path
    else:
        folder = torch_hub_checkpoint_dir()
    for name in spec.imagenet_checkpoints:
        if (folder / name).is_file():
            return folder / name
    if path is not None:
        raise CheckpointNotFoundError(missing_checkpoint_message(spec, folder))
    return None


def missing_checkpoint_message(backbone: str | BackboneSpec = DEFAULT_BACKBONE, folder: Path | None = None) -> str:
    """One line saying which file to download and where to put it."""
    spec = backbone_spec(backbone)
    if not spec.imagenet_checkpoints:
        return (f"{spec.name} has no torchvision ImageNet checkpoint: download its weights ({spec.weights_source}) "
                "and pass the file's path as weights (--weights PATH)")
    folder = folder or torch_hub_checkpoint_dir()
    (name, url), *others = spec.imagenet_checkpoints.items()
    alternatives = f" (or {', '.join(n for n, _ in others)})" if others else ""
    return (f"No ImageNet {spec.name} checkpoint found in {folder} and it could not be downloaded: "
            f"download {url}{alternatives} and put it at {folder / name}, or pass the file's path as weights=...")


def download_checkpoint(url: str, folder: Path, *, timeout: float = 10.0) -> Path:
    """Download ``url`` into ``folder`` atomically, checking the sha256 prefix in its name as torch.hub does."""
    target = folder / url.rsplit("/", 1)[-1]
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=timeout) as response, atomic_path(target) as tmp:
        with open(tmp, "wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        expected = re.search(r"-([a-f0-9]+)\.", target.name)
        if expected and not digest.hexdigest().startswith(expected.group(1)):
            raise CheckpointNotFoundError(f"{url}: downloaded file's sha256 does not start with {expected.group(1)}")
    return target


def imagenet_checkpoint(path: str | os.PathLike | None = None, backbone: str | BackboneSpec = DEFAULT_BACKBONE,
                        *, download: bool = True, timeout: float = 10.0) -> Path:
    """The ImageNet checkpoint file of ``backbone``: ``path``, the torch hub folder, or downloaded into it.

    Without a file on disk it is downloaded when ``download`` is true and the network answers
    within ``timeout`` seconds; otherwise ``CheckpointNotFoundError`` names the file and where to put it.
    """
    spec = backbone_spec(backbone)
    found = find_imagenet_checkpoint(path, spec)
    if found is not None:
        return found
    if not download or not spec.imagenet_checkpoints:
        raise CheckpointNotFoundError(missing_checkpoint_message(spec))
    url = next(iter(spec.imagenet_checkpoints.values()))
    try:
        return download_checkpoint(url, torch_hub_checkpoint_dir(), timeout=timeout)
    except OSError as error:
        raise CheckpointNotFoundError(f"{missing_checkpoint_message(spec)} ({error})") from None


def unwrap_state_dict(checkpoint: Any, source: str = "checkpoint") -> dict[str, Any]:
    """The state_dict inside a loaded checkpoint: the mapping itself or the one under a wrapper key,
    without a DataParallel/DDP ``module.`` prefix."""
    state = checkpoint
    if isinstance(state, Mapping):
        for key in WRAPPER_KEYS:
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping) or not state or not all(isinstance(k, str) for k in state):
        raise CheckpointError(f"{source} holds no state_dict (found {type(checkpoint).__name__}); pass a model "
                              "checkpoint saved with torch.save(model.state_dict()) or by a training run")
    if all(k.startswith(DDP_PREFIX) for k in state):
        state = {k[len(DDP_PREFIX):]: v for k, v in state.items()}
    return dict(state)


def _study_head_key(key: str) -> str:
    rest = key[len("classifier."):]
    return f"head.0.{rest}" if rest in ("weight", "bias") else f"head.{rest}"


def is_dual_state(state: Mapping[str, Any]) -> bool:
    """Whether a state_dict is a whole dual model (backbone.* keys) rather than a bare backbone."""
    return any(k.startswith("backbone.") for k in state)


def dual_state_dict(state: Mapping[str, Any]) -> dict[str, Any]:
    """A dual-model state_dict in torch_odir's layout (``backbone.*``, ``head.*``); the study's
    ``classifier.*`` head keys are renamed to ``head.*`` (v0's plain Linear becomes ``head.0``)."""
    return {(_study_head_key(k) if k.startswith("classifier.") else k): v for k, v in state.items()}


def backbone_state_dict(state: Mapping[str, Any], backbone: str | BackboneSpec = DEFAULT_BACKBONE) -> dict[str, Any]:
    """A torchvision model's state_dict without its ImageNet classifier (``fc.*`` for ResNet), with the key
    names of torchvision's current modules (``spec.renamed_keys``); a Vision Transformer's published file made
    ready for the spec (``odir_core.model.families.vit.checkpoint_state``: position embeddings for another input
    size resampled, the keys it does not use dropped)."""
    spec = backbone_spec(backbone)
    prefix = spec.classifier + "."
    state = {k: v for k, v in state.items() if not k.startswith(prefix)}
    for pattern, replacement in spec.renamed_keys:
        state = {re.sub(pattern, replacement, k): v for k, v in state.items()}
    return vit.checkpoint_state(state, spec) if spec.patch_size else state


def published_backbone(state: Mapping[str, Any]) -> BackboneSpec:
    """The registered backbone whose published file ``state`` is (a torchvision checkpoint, RETFound's MAE file):
    the one whose keys it holds once made ready for it (:func:`backbone_state_dict`); else an ``ArchitectureError``
    naming the closest."""
    for spec in BACKBONES.values():
        if {k for k in backbone_state_dict(state, spec) if not k.endswith("num_batches_tracked")} == spec.state_keys:
            return spec
    return infer_backbone(state)  # raises, naming the closest backbone


def check_finite(named_arrays, source: str) -> None:
    """Raise ``CheckpointError`` when any of ``(name, array)`` holds NaN or infinity (a diverged run's weights)."""
    bad = [name for name, array in named_arrays if not np.isfinite(np.asarray(array, dtype=np.float64)).all()]
    if bad:
        raise CheckpointError(f"{source} has non-finite weights (NaN or infinity) in {len(bad)} tensors, e.g. "
                              f"{', '.join(bad[:3])}: it comes from a diverged run; train again with a lower --lr")


def read_checkpoint(path: str | os.PathLike, load: Callable[[Path], Any]) -> dict[str, Any]:
    """The state_dict in a torch checkpoint file, read by ``load`` (``torch.load``) and unwrapped.

    Any failure is one ``CheckpointError`` naming the file (a missing file: ``FileNotFoundError``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        checkpoint = load(path)
    except Exception as error:  # torch.load raises unpickling, zip and runtime errors alike for a damaged file
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({_load_failure(path, error)}); "
                              "check the file or download it again") from None
    return unwrap_state_dict(checkpoint, source=str(path))


def _load_failure(path: Path, error: Exception) -> str:
    """Why ``torch.load`` failed, on one line (its own messages run over many lines)."""
    with path.open("rb") as f:
        head = f.read(1)
    if not zipfile.is_zipfile(path) and head != b"\x80":  # torch.save writes a zip archive, older torch a pickle
        return "not a complete zip archive or pickle: truncated, damaged or another format"
    first = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {first[:200]}"


def load_imagenet_backbone_state(path: str | os.PathLike | None, backbone: str | BackboneSpec,
                                 load: Callable[[Path], Any], *, download: bool = True) -> dict[str, Any]:
    """torchvision's ImageNet weights of ``backbone`` without its classifier, read by ``load``.

    ``path``: the checkpoint file or a folder holding it; None: the torch hub folder (downloaded there
    when missing and ``download``). A damaged file is a ``CheckpointNotFoundError`` saying to replace it.
    """
    spec = backbone_spec(backbone)
    found = imagenet_checkpoint(path, spec, download=download)
    try:
        state = read_checkpoint(found, load)
    except CheckpointError as error:
        raise CheckpointNotFoundError(f"{error}; delete it and download "
                                      f"{next(iter(spec.imagenet_checkpoints.values()))} again") from None
    return backbone_state_dict(state, spec)
