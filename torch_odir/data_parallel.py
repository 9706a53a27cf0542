"""Data-parallel training for torch_odir.train under torchrun: the model wrapped in DDP (which rows each rank
takes: ``odir_core.training.ranks``; the collectives both trainers share: ``odir_core.training.collectives``)."""

from __future__ import annotations

import torch
from torch import nn

from odir_core.training.ranks import Ranks


def wrap(module: nn.Module, ranks: Ranks, device: torch.device, sync_bn: bool) -> nn.Module:
    """``module`` as DDP averages its gradients over the ranks (``sync_bn``: BatchNorm over the global batch,
    CUDA only); ``module`` itself with one process or nothing to train."""
    if not ranks.distributed or not any(p.requires_grad for p in module.parameters()):
        return module
    if sync_bn:
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(module, device_ids=ids)
