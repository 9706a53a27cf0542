"""``--device`` in torch_odir: the torch device of a training, evaluate or predict run (``odir_core.training.devices``)."""

from __future__ import annotations

import torch

from odir_core.training import devices
from odir_core.training.ranks import Ranks


def resolve_device(name: str, ranks: Ranks = Ranks()) -> torch.device:
    """``auto``: the first CUDA device when available (under torchrun the local rank's), else the CPU; an
    unavailable device is a one-line ``DeviceError``."""
    local = ranks.local_rank if ranks.distributed else None
    return torch.device(devices.resolve_device(name, torch.cuda.is_available(), local))
