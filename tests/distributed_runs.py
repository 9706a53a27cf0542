"""Training runs for the distributed tests, run by every process of one torchrun launch (one launch pays
the start-up once): ``torchrun --nproc_per_node N tests/distributed_runs.py TRAINER OUT DATA JOB...``.

Each JOB trains into ``OUT/<job>/`` through the trainer's own CLI (``torch`` or ``keras``); ``cut`` stops
both processes after the first epoch's backup as Ctrl-C would, and ``resume`` continues the ``cut`` run.
The jobs' flags are ``JOBS`` below; the tests run the same flags in one process as the reference.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch.distributed as dist

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
JOBS = {"frozen": FROZEN, "frozen_images": FROZEN_IMAGES, "fine_tuned": FINE_TUNED,
        "fine_tuned_small_step": FINE_TUNED_SMALL_STEP, "straight": RESUMED, "cut": RESUMED}


def job_args(job: str, data, out) -> list[str]:
    """The CLI flags of ``job`` with its run folders under ``out/job``."""
    return tiny_train_args(data, Path(out) / job, *JOBS[job])


def torchrun(trainer: str, out: Path, data: Path, *jobs: str) -> subprocess.CompletedProcess:
    """Run ``jobs`` of this file under torchrun with two gloo processes; each rank's output in ``out/logs``."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)]),
           "KERAS_BACKEND": "torch", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--log-dir",
               str(out / "logs"), "--redirects", "3", __file__, trainer, str(out), str(data), *jobs]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def rank_output(out: Path, rank: int, stream: str = "stdout") -> str:
    """What process ``rank`` printed during the launch."""
    return "".join(p.read_text() for p in (out / "logs").rglob(f"{rank}/{stream}.log"))


def _stop_after_first_epoch(trainer: str):
    """Make the trainer stop as Ctrl-C would once the first epoch's backup is written; returns the undo."""
    if trainer == "torch":
        import torch_odir.train as module
        name = "early_stopping_state"  # called right after the epoch's backup
        original = module.early_stopping_state

        def patched(losses, patience):
            if len(losses) == 1:
                raise KeyboardInterrupt
            return original(losses, patience)
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


def main(trainer: str, out: str, data: str, *jobs: str) -> int:
    if trainer == "torch":
        import torch_odir.train as train
    else:
        import keras_odir.train as train
    dist.init_process_group("gloo")
    codes = {}
    for job in jobs:
        if job == "resume":
            codes[job] = train.main(["--resume", str(only_run(Path(out) / "cut"))])
            continue
        undo = _stop_after_first_epoch(trainer) if job == "cut" else None
        codes[job] = train.main(job_args(job, data, out))
        if undo is not None:
            undo()
        dist.barrier()
    if dist.get_rank() == 0:
        (Path(out) / "codes.json").write_text(json.dumps(codes))
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
