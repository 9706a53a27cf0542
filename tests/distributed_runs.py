"""Training runs for the distributed tests, run by every process of one launch of two processes with torchrun's
variables (``launch``; one launch pays the start-up once): ``tests/distributed_runs.py TRAINER OUT DATA JOB...``.

Each JOB trains into ``OUT/<job>/`` through the trainer's own CLI (``torch`` or ``keras``); ``cut`` stops
both processes after the first epoch's backup as Ctrl-C would, and ``resume-NAME`` continues the run under
``OUT/NAME``. The jobs' flags are ``JOBS`` below; the tests run the same flags in one process as the
reference. ``OUT/codes.json`` holds each process's exit code of each job, a list indexed by rank.

``train_and_kill`` runs a trainer's CLI itself under torchrun and kills one of its processes mid-training.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch.distributed as dist

import warm_processes
from training_runs import only_run, tiny_train_args

TESTS = Path(__file__).resolve().parent

# 16 training patients, global batch 7: batches of 7, 7 and 2 rows, split 4+3, 4+3, 1+1 over two processes
FROZEN = ["--no-fine-tune", "--backbone", "resnet18", "--head", "v0", "--batch-size", "7", "--epochs", "1",
          "--lr", "0.05", "--patience", "0"]
# a frozen backbone run every step on augmented images (the whole model under DDP)
FROZEN_IMAGES = ["--no-fine-tune", "--no-feature-cache", "--backbone", "resnet18", "--head", "v0", "--augment", "dual",
                 "--crop-size", "28", "--batch-size", "7", "--epochs", "1", "--lr", "0.05", "--patience", "0"]
# fine-tuned ResNet-18: batches of 8 rows, 4 per process, BatchNorm in training mode
FINE_TUNED = ["--fine-tune", "--backbone", "resnet18", "--head", "v0", "--batch-size", "8", "--epochs", "1",
              "--lr", "0.05", "--patience", "0"]
# two epochs with augmentation, the balanced sampler and a schedule; cut after the first
RESUMED = ["--fine-tune", "--backbone", "resnet18", "--head", "v0", "--batch-size", "8", "--augment", "dual",
           "--crop-size", "28", "--balanced-sampler",
           "--scheduler", "cyclic", "--cyclic-step-size-up", "2", "--cyclic-max-lr", "0.05", "--epochs", "2",
           "--patience", "0", "--lr", "0.01"]
# fine-tuned, one step of the whole training split (16 rows): one device and several differ in summation order only
FINE_TUNED_SMALL_STEP = ["--fine-tune", "--backbone", "resnet18", "--head", "v0", "--batch-size", "16", "--epochs",
                         "1", "--lr", "0.001", "--patience", "0"]
# FINE_TUNED for three epochs: a process is killed after the first
KILLED = [*FINE_TUNED, "--epochs", "3"]
# errors every process meets alike: a flag's value, a batch that leaves a process empty (found once the run's
# data is read), a data folder that does not exist (found by rank 0, which reads the data for every process)
BAD_FLAG = [*FROZEN, "--epochs", "many"]
BAD_SPLIT = [*FROZEN, "--batch-size", "1"]  # batches of 1 row (a last batch of one pair alone is left out)
NO_DATA = [*FROZEN, "--data", "/nonexistent/odir"]
JOBS = {"frozen": FROZEN, "frozen_images": FROZEN_IMAGES, "fine_tuned": FINE_TUNED,
        "fine_tuned_small_step": FINE_TUNED_SMALL_STEP, "straight": RESUMED, "cut": RESUMED, "killed": KILLED,
        "bad_flag": BAD_FLAG, "bad_split": BAD_SPLIT, "no_data": NO_DATA}
MODULES = {"torch": "torch_odir.train", "keras": "keras_odir.train"}


def job_args(job: str, data, out) -> list[str]:
    """The CLI flags of ``job`` with its run folders under ``out/job``."""
    return tiny_train_args(data, Path(out) / job, *JOBS[job])


def _worker_env() -> dict[str, str]:
    """The environment of every worker process (the repository and the tests importable, one thread each)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)]), "KERAS_BACKEND": "torch",
            "OMP_NUM_THREADS": "1"}


def _launch(out: Path, *args: str) -> tuple[list[str], dict[str, str]]:
    """The command and environment of torchrun starting two gloo processes that run ``args`` (a script or
    ``-m MODULE``, then its arguments); each rank's output goes to ``out/logs``."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--log-dir", str(out / "logs"),
            "--redirects", "3", *args], _worker_env()


def launch(trainer: str, out: Path, data: Path, *jobs: str) -> None:
    """Run ``jobs`` of this file in two gloo processes given the variables torchrun gives its workers (``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, the rendezvous address), forked from the warm server (``warm_processes``:
    torchrun itself is tested by ``train_and_kill``); each rank's output in ``out/logs/<rank>``."""
    env = {**_worker_env(), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}
    ranks = [warm_processes.start([sys.executable, __file__, trainer, str(out), str(data), *jobs],
                                  env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}) for rank in (0, 1)]
    try:
        for rank, process in enumerate(ranks):
            outputs = process.communicate(timeout=300)
            for stream, text in zip(("stdout", "stderr"), outputs):
                (out / "logs" / str(rank)).mkdir(parents=True, exist_ok=True)
                (out / "logs" / str(rank) / f"{stream}.log").write_text(text)
            assert process.returncode == 0, outputs[1][-3000:]
    finally:
        for process in ranks:
            process.kill()


def free_port() -> int:
    """A TCP port of this machine that no one listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_and_kill(trainer: str, out: Path, data: Path, job: str, backup: Path, rank: int = 1,
                   timeout: float = 300) -> subprocess.CompletedProcess:
    """Train ``job`` into ``out/job`` with the trainer's own CLI under torchrun (two gloo processes) and kill
    process ``rank`` with SIGKILL, as the OOM killer would, once the run folder holds ``backup`` (relative to
    it: the first epoch's backup); torchrun's result, its output in ``out/torchrun.out`` and ``.err``."""
    command, env = _launch(out, "-m", MODULES[trainer], *job_args(job, data, out))
    with open(out / "torchrun.out", "w") as stdout, open(out / "torchrun.err", "w") as stderr:
        launch = subprocess.Popen(command, env=env, stdout=stdout, stderr=stderr)
        try:
            deadline = time.monotonic() + timeout
            while not any(run.joinpath(backup).is_file() for run in (out / job).glob("*")):
                assert launch.poll() is None, f"the run ended before its first backup: {rank_output(out, 0, 'stderr')}"
                assert time.monotonic() < deadline, "no backup in time"
                time.sleep(0.02)
            os.kill(worker_pid(launch.pid, rank), signal.SIGKILL)
            launch.wait(timeout=timeout)
        finally:
            if launch.poll() is None:
                launch.kill()
                launch.wait()
    return subprocess.CompletedProcess(command, launch.returncode, (out / "torchrun.out").read_text(),
                                       (out / "torchrun.err").read_text())


def worker_pid(launcher: int, rank: int) -> int:
    """The process id of the worker of ``rank`` that torchrun (process ``launcher``) started (Linux /proc)."""
    for children in Path(f"/proc/{launcher}/task").glob("*/children"):
        for pid in children.read_text().split():
            with contextlib.suppress(OSError):  # a process that has ended meanwhile
                if f"RANK={rank}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                    return int(pid)
    raise AssertionError(f"torchrun (process {launcher}) has no worker of rank {rank}")


def rank_output(out: Path, rank: int, stream: str = "stdout") -> str:
    """What process ``rank`` printed during the launch."""
    return "".join(p.read_text() for p in (out / "logs").rglob(f"{rank}/{stream}.log"))


def _stop_after_first_epoch(trainer: str):
    """Make the trainer stop as Ctrl-C would once the first epoch's backup is written; returns the undo."""
    if trainer == "torch":
        import torch_odir.train as module
        name = "early_stopping_state"  # called right after the epoch's backup
        original = module.early_stopping_state

        def patched(losses):
            if len(losses) == 1:
                raise KeyboardInterrupt
            return original(losses)
    else:
        import keras

        import keras_odir.train as module
        name = "training_callbacks"  # the backup is the last callback; this one comes after it
        original = module.training_callbacks

        class Interrupt(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if epoch == 0:
                    raise KeyboardInterrupt

        def patched(**kwargs):
            return original(**kwargs) + [Interrupt()]

    setattr(module, name, patched)
    return lambda: setattr(module, name, original)


def _exit_code(main, args: list[str]) -> int:
    """``main(args)``, or the exit code of the SystemExit it raises (argparse's, for a bad flag)."""
    try:
        return main(args)
    except SystemExit as exc:
        return exc.code


def main(trainer: str, out: str, data: str, *jobs: str) -> int:
    if trainer == "torch":
        import torch_odir.train as train
    else:
        import keras_odir.train as train
    dist.init_process_group("gloo")
    codes = {}
    for job in jobs:
        if job.startswith("resume-"):
            codes[job] = train.main(["--resume", str(only_run(Path(out) / job.removeprefix("resume-")))])
            continue
        undo = _stop_after_first_epoch(trainer) if job == "cut" else None
        codes[job] = _exit_code(train.main, job_args(job, data, out))
        if undo is not None:
            undo()
        dist.barrier()
    every = [None] * dist.get_world_size()
    dist.all_gather_object(every, codes)
    if dist.get_rank() == 0:
        (Path(out) / "codes.json").write_text(json.dumps(every))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
