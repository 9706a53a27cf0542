"""Data-parallel training for keras_odir.train on the engines of each backend.

torch: torchrun starts one process per device; each trains its slice of every global batch
(``odir_core.training.ranks``) and ``TorchSGD`` averages the gradients over ``torch.distributed`` before each
step (Keras has no ``keras.distribution`` on torch). jax: ``keras.distribution.DataParallel`` over every
device; the SPMD program splits each global batch over the devices, averages the gradients and normalises
BatchNorm over the global batch. Several jax processes (one per machine, say) join one job through
``keras.distribution.initialize`` when the environment names it (``jax_job``); each feeds its slice of every
global batch (``odir_core.training.ranks``), which Keras assembles into the global batch
(``jax.make_array_from_process_local_data``). tensorflow: one device.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from dataclasses import dataclass

import keras
import numpy as np

from odir_core.training import devices
from odir_core.training.collectives import process_group
from odir_core.training.config import TrainConfig
from odir_core.training.ranks import DistributedError, Ranks, batch_sizes


# The environment variables that make a process one of a multi-process jax job, in order of precedence: the
# names jax users set (jax.distributed reads the first), then keras.distribution.initialize's own.
JAX_JOB_VARIABLES = (("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"),
                     ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
                      "KERAS_DISTRIBUTION_PROCESS_ID"))


@dataclass(frozen=True)
class JaxJob:
    """One process of a multi-process jax job: the coordinator (process 0's ``host:port``), how many
    processes, and which this is."""

    address: str
    processes: int
    process_id: int


def jax_job(env=None) -> JaxJob | None:
    """The multi-process jax job the environment describes (``JAX_JOB_VARIABLES``); None for one process
    (no such variables, or a count of 1)."""
    env = os.environ if env is None else env
    for address_name, count_name, id_name in JAX_JOB_VARIABLES:
        count = env.get(count_name, "").strip()
        if not count:
            continue
        processes = _whole(count, count_name)
        if processes <= 1:
            return None
        address, process_id = env.get(address_name, "").strip(), env.get(id_name, "").strip()
        if not address or not process_id:
            raise DistributedError(f"{count_name}={processes} needs {address_name} (process 0's host:port) and "
                                   f"{id_name} (0 to {processes - 1}) as well")
        number = _whole(process_id, id_name)
        if not 0 <= number < processes:
            raise DistributedError(f"{id_name}={number}: must be 0 to {processes - 1} ({count_name}={processes})")
        return JaxJob(address, processes, number)
    return None


def _whole(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise DistributedError(f"{name}={value!r}: not a whole number") from None


def ranks() -> Ranks:
    """This process's ranks: torchrun's on the torch backend; on jax those of the multi-process job the
    environment names (``jax_job``), joined here through ``keras.distribution.initialize`` before any jax
    computation (once per process); one process elsewhere (checked in ``processes``)."""
    job = jax_job() if keras.backend.backend() == "jax" else None
    if job is None:
        return Ranks.from_env()
    _join(job)
    return Ranks(job.process_id, job.processes)


def _join(job: JaxJob) -> None:
    import jax

    if not jax.distributed.is_initialized():
        keras.distribution.initialize(job_addresses=job.address, num_processes=job.processes,
                                      process_id=job.process_id)
    if (jax.process_count(), jax.process_index()) != (job.processes, job.process_id):
        raise DistributedError(f"this process is process {jax.process_index()} of {jax.process_count()} jax "
                               f"processes, not {job.process_id} of {job.processes} as the environment says")


def _jax_devices() -> list:
    """Every device of the jax job, those of process 0 first, then process 1's, ...: process ``r``'s block of
    each global batch is then its slice ``odir_core.training.ranks.rank_slice``."""
    import jax

    return sorted(jax.devices(), key=lambda device: device.process_index)


class _JaxObjects:
    """The object collectives ``odir_core.training.collectives`` uses (torch.distributed's names), over the processes
    of the jax job: pickled objects gathered through ``multihost_utils.process_allgather``."""

    @staticmethod
    def is_initialized() -> bool:
        return True  # joined by keras.distribution.initialize

    @staticmethod
    def all_gather_object(parts: list, value) -> None:
        from jax.experimental import multihost_utils

        data = np.frombuffer(pickle.dumps(value), dtype=np.uint8)
        sizes = np.asarray(multihost_utils.process_allgather(np.array([len(data)], dtype=np.int64))).reshape(-1)
        padded = np.zeros(int(sizes.max()), dtype=np.uint8)
        padded[:len(data)] = data
        every = np.asarray(multihost_utils.process_allgather(padded))
        parts[:] = [pickle.loads(every[r, :int(sizes[r])].tobytes()) for r in range(len(sizes))]

    @classmethod
    def broadcast_object_list(cls, box: list, src: int = 0) -> None:
        parts = [None]
        cls.all_gather_object(parts, box)
        box[:] = parts[src]


@contextlib.contextmanager
def processes(ranks: Ranks, config: TrainConfig):
    """Join the torch process group (torch backend under torchrun) or spread over jax's devices for the block."""
    backend = keras.backend.backend()
    job = jax_job()
    if job is not None and backend != "jax":
        raise DistributedError(f"the environment names a jax job of {job.processes} processes (JAX_NUM_PROCESSES or "
                               f"KERAS_DISTRIBUTION_NUM_PROCESSES): run it with KERAS_BACKEND=jax")
    if ranks.distributed and backend != "torch" and job is None:
        raise DistributedError(f"keras_odir.train under {ranks.world} torchrun processes runs on the torch backend "
                               f"only (KERAS_BACKEND=torch); on jax start one process per machine with "
                               f"JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (one process "
                               f"drives every device of its machine)")
    if backend == "jax" and len(_jax_devices()) > 1:
        # each process feeds its own slice of every global batch: no sharding of the dataset by Keras
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=_jax_devices(),
                                                                            auto_shard_dataset=False))
        try:
            with process_group(ranks, "jax", _JaxObjects()):
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

    device = devices.resolve_device(config.device, torch.cuda.is_available(), ranks.local_rank)
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
        spread = f" of {ranks.world} processes" if ranks.distributed else ""
        return f", DataParallel over {len(distribution.device_mesh.devices.flatten())} devices{spread}"
    return f", {ranks.world} processes" if ranks.distributed else ""


def _over_processes():
    """The Keras distribution when it spans several processes of a jax job, else None."""
    distribution = keras.distribution.distribution()
    return distribution if distribution is not None and distribution.num_processes > 1 else None


@contextlib.contextmanager
def this_process_only():
    """For a block that runs on one process of a jax job alone (rank 0 writing a checkpoint): without the
    distribution, so that what Keras makes meanwhile (saving builds a throwaway optimizer, whose variables
    the distribution would place on every process's devices, checking with the others that they agree) stays
    on this process instead of waiting for processes that never join. The model's variables are replicated,
    so reading them needs no other process."""
    distribution = _over_processes()
    if distribution is None:
        yield
        return
    keras.distribution.set_distribution(None)
    try:
        yield
    finally:
        keras.distribution.set_distribution(distribution)


def one_program(ranks: Ranks) -> bool:
    """Whether the processes run one jax program: what it computes (metrics, the epoch's outputs) already holds
    every process's rows, in global batch order."""
    return ranks.distributed and keras.distribution.distribution() is not None


def predict(model: keras.Model, batches, verbose=0) -> np.ndarray:
    """``model.predict(batches)``: the outputs of the rows this process fed. Under one jax program over several
    processes the outputs span them all, which ``predict`` cannot bring to numpy; each process keeps its rows
    (``odir_core.training.collectives.gather_rows`` then gathers them, as on torch)."""
    if _over_processes() is None:
        return model.predict(batches, verbose=verbose)
    model.make_predict_function()
    step = model.predict_function

    def local_step(state, iterator):
        outputs, state = step(state, iterator)
        return keras.tree.map_structure(_process_rows, outputs), state

    model.predict_function = local_step
    try:
        return model.predict(batches, verbose=verbose)
    finally:
        model.predict_function = step


def _process_rows(value):
    """The rows of a batch-sharded jax array on this process's devices, in order, as numpy."""
    if getattr(value, "is_fully_addressable", True):
        return value
    shards = {shard.index[0].start or 0: shard.data for shard in value.addressable_shards}  # one per replica
    return np.concatenate([np.asarray(shards[start]) for start in sorted(shards)])


def gradient_reducer(ranks: Ranks):
    """For ``TorchSGD.reduce_gradients``: the mean of the gradients over the processes on torch; None with one
    process, and on jax, whose one program over every process averages them itself."""
    if not ranks.distributed or keras.backend.backend() != "torch":
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
