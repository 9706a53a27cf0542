"""Data-parallel training for keras_odir.train on the engines of each backend.

torch: torchrun starts one process per device; each trains its slice of every global batch
(``odir_core.distributed``) and ``TorchSGD`` averages the gradients over ``torch.distributed`` before each
step (Keras has no ``keras.distribution`` on torch). jax: one process drives every device of the machine
through ``keras.distribution.DataParallel``; the SPMD program splits each global batch over the devices,
averages the gradients and normalises BatchNorm over the global batch. tensorflow: one device.
"""

from __future__ import annotations

import contextlib

import keras

from odir_core import devices
from odir_core.collectives import process_group
from odir_core.config import TrainConfig
from odir_core.distributed import DistributedError, Ranks, batch_sizes


def ranks() -> Ranks:
    """This process's ranks: torchrun's on the torch backend; one process elsewhere (checked in ``processes``)."""
    return Ranks.from_env()


def _jax_devices() -> list:
    import jax

    return jax.devices()


@contextlib.contextmanager
def processes(ranks: Ranks, config: TrainConfig):
    """Join the torch process group (torch backend under torchrun) or spread over jax's devices for the block."""
    backend = keras.backend.backend()
    if ranks.distributed and backend != "torch":
        raise DistributedError(f"keras_odir.train under {ranks.world} processes runs on the torch backend only "
                               f"(KERAS_BACKEND=torch); on jax start one process, it uses every device of the machine")
    if backend == "jax" and len(_jax_devices()) > 1:
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=_jax_devices()))
        try:
            yield
        finally:
            keras.distribution.set_distribution(None)
        return
    if not ranks.distributed:
        yield
        return
    if config.sync_bn:
        raise DistributedError("--sync-bn: Keras on the torch backend has no synchronised BatchNorm; leave it out "
                               "(each process normalises its own slice) or train on jax, which normalises over "
                               "the global batch")
    if config.precision == "fp16":
        raise DistributedError("--precision fp16 under several processes: the loss scale would be decided per "
                               "process; use bf16")
    import torch
    import torch.distributed

    device = devices.resolve_device("auto", torch.cuda.is_available(), ranks.local_rank)
    with process_group(ranks, device, torch.distributed, torch.cuda.set_device):
        yield


def check_batches(splits: dict[str, int], batch_size: int) -> None:
    """Under ``DataParallel`` (jax), refuse with one line batches that do not divide evenly over the devices
    (XLA shards every batch in equal parts); ``splits``: patients per split, e.g. {"training": 16}."""
    distribution = keras.distribution.distribution()
    if distribution is None:
        return
    count = len(distribution.device_mesh.devices.flatten())
    for split, rows in splits.items():
        uneven = [size for size in batch_sizes(rows, batch_size) if size % count]
        if uneven:
            raise DistributedError(
                f"--batch-size {batch_size} on {count} jax devices: a {split} batch of {uneven[0]} patient(s) "
                f"({rows} in the split) does not divide evenly over them; choose a batch size that leaves every "
                f"batch, the last one too, a multiple of {count} patients")


def describe(ranks: Ranks) -> str:
    """What the run is spread over, for its first line ('' for one device)."""
    distribution = keras.distribution.distribution()
    if distribution is not None:
        return f", DataParallel over {len(distribution.device_mesh.devices.flatten())} devices"
    return f", {ranks.world} processes" if ranks.distributed else ""


def gradient_reducer(ranks: Ranks):
    """For ``TorchSGD.reduce_gradients``: the mean of the gradients over the processes; None with one."""
    if not ranks.distributed:
        return None
    return lambda grads: average_gradients(grads, ranks.world)


def average_gradients(grads: list, world: int) -> list:
    """The mean over the processes of each gradient tensor (one all-reduce of them all, flattened; torch)."""
    import torch
    import torch.distributed as dist

    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    out, start = [], 0
    for g in grads:
        out.append(flat[start:start + g.numel()].view_as(g))
        start += g.numel()
    return out
