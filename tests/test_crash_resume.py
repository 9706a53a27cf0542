"""Killed runs (SIGKILL at several points, in a subprocess) leave nothing that looks finished, and
``--resume`` either ends with exactly the weights of an uninterrupted run or says in one line why it
cannot and what to do."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import keras_odir  # noqa: F401  (torch backend unless KERAS_BACKEND says otherwise; registers its layers)
from odir_core.data.synthetic import generate
from odir_core.training.run import FINISHED_FILE
import warm_processes
from training_runs import keras_weights, only_run, tiny_train_args

SCRIPT = Path(__file__).with_name("crash_run.py")
# ResNet18: what a kill can damage (checkpoints, backups, history) is the same for any backbone, at half the bytes;
# two epochs: a run killed during the second one's writes resumes after the first and trains the second again
FLAGS = ("--backbone", "resnet18", "--fine-tune", "--augment", "dual", "--crop-size", "28", "--epochs", "2",
         "--patience", "0", "--lr", "0.002", "--scheduler", "cyclic", "--cyclic-step-size-up", "2",
         "--cyclic-max-lr", "0.01")
KILLED = -9


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn") / "set", patients=20, size=40, seed=3)


def run(trainer: str, point: str, *flags) -> subprocess.CompletedProcess:
    env = {**os.environ, "KERAS_BACKEND": "torch", "PYTHONPATH": str(Path(__file__).parent)}
    return warm_processes.run([sys.executable, str(SCRIPT), trainer, point, *flags], env=env, timeout=900)


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory):
    """The uninterrupted run of each trainer (the reference for every resumed one)."""
    out = {}
    for trainer in ("keras", "torch"):
        root = tmp_path_factory.mktemp(f"straight-{trainer}")
        proc = run(trainer, "none", *tiny_train_args(data, root, *FLAGS))
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[trainer] = only_run(root)
    return out


def weights(run_dir: Path, trainer: str) -> list[np.ndarray]:
    if trainer == "torch":
        state = torch.load(run_dir / "last.pth", weights_only=True)["state_dict"]
        return [v.numpy() for k, v in state.items() if not k.endswith("num_batches_tracked")]
    return list(keras_weights(run_dir / "last.keras").values())


def assert_same_run(a: Path, b: Path, trainer: str) -> None:
    for x, y in zip(weights(a, trainer), weights(b, trainer), strict=True):
        np.testing.assert_allclose(x, y, atol=1e-6, rtol=0)
    pd.testing.assert_frame_equal(pd.read_csv(a / "history.csv"), pd.read_csv(b / "history.csv"), rtol=1e-5)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("trainer,point", [
    ("keras", "backup-weights"),
    ("keras", "backup-metadata"),
    ("keras", "last-checkpoint"),
    ("torch", "backup-state"),
    ("torch", "last-checkpoint"),
])
def test_killed_mid_write_resumes_to_the_uninterrupted_weights(data, straight, tmp_path, trainer, point):
    proc = run(trainer, point, *tiny_train_args(data, tmp_path, *FLAGS))
    assert proc.returncode == KILLED, proc.stderr[-3000:]
    cut = only_run(tmp_path)
    assert not (cut / FINISHED_FILE).exists()
    assert len(pd.read_csv(cut / "history.csv")) in (1, 2)  # killed during epoch 2's writes
    proc = run(trainer, "none", "--resume", str(cut))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Resuming after epoch 1" in proc.stdout
    assert (cut / FINISHED_FILE).is_file() and not (cut / "backup").exists()
    assert not [p.name for p in cut.rglob(".*")]  # the killed write's temporary file is gone
    assert_same_run(straight[trainer], cut, trainer)


# The fine-tuning recipe: TorchAdamW's running averages and step count in Keras' backup, and the per-step schedule
# (the optimizer's step count) continuing where the killed run stopped; the head alone trained on cached features
# keeps it fast (what the backup holds is the same optimizer state for any set of weights).
RECIPE = ("--backbone", "resnet18", "--head", "v2", "--epochs", "2", "--patience", "0", "--optimizer", "adamw",
          "--weight-decay", "0.05", "--layer-decay", "0.75", "--scheduler", "warmup_cosine", "--warmup-epochs", "1",
          "--schedule-step", "step", "--lr", "0.002")


@pytest.mark.slow  # three training processes; the optimizer's state round trip: tests/test_optimizers.py
def test_killed_adamw_run_resumes_to_the_uninterrupted_weights(data, tmp_path):
    proc = run("keras", "none", *tiny_train_args(data, tmp_path / "straight", *RECIPE))
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run("keras", "backup-weights", *tiny_train_args(data, tmp_path / "cut", *RECIPE))
    assert proc.returncode == KILLED, proc.stderr[-3000:]
    cut = only_run(tmp_path / "cut")
    proc = run("keras", "none", "--resume", str(cut))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Resuming after epoch 1" in proc.stdout
    assert_same_run(only_run(tmp_path / "straight"), cut, "keras")


@pytest.mark.parametrize("trainer", ["keras", "torch"])
def test_killed_before_the_first_backup_points_to_the_last_model(data, tmp_path, trainer):
    """Epoch 1's checkpoints and history are written, its backup is not: no resume, but its last model."""
    proc = run(trainer, "first-backup", *tiny_train_args(data, tmp_path, *FLAGS))
    assert proc.returncode == KILLED
    cut = only_run(tmp_path)
    proc = run(trainer, "none", "--resume", str(cut))
    assert proc.returncode == 2
    line = one_error_line(proc)
    last = next(cut.glob("last.*"))
    assert "backup is missing" in line and "Start a new run" in line and f"--weights {last} " in line
    assert "finished" not in line


@pytest.mark.parametrize("trainer", ["keras", "torch"])
def test_killed_after_the_finish_marker_says_finished(data, tmp_path, trainer):
    proc = run(trainer, "finish", *tiny_train_args(data, tmp_path, "--backbone", "resnet18", "--epochs", "1"))
    assert proc.returncode == KILLED
    cut = only_run(tmp_path)
    proc = run(trainer, "none", "--resume", str(cut))
    assert proc.returncode == 2
    assert "the run has finished" in one_error_line(proc)


@pytest.mark.parametrize("trainer,backup", [("keras", "backup/training_metadata.json"),
                                             ("torch", "backup/state.pth")])
def test_damaged_backup_is_one_line_that_says_what_can_be_done(data, tmp_path, trainer, backup):
    proc = run(trainer, "backup-weights" if trainer == "keras" else "backup-state",
               *tiny_train_args(data, tmp_path, *FLAGS))
    assert proc.returncode == KILLED
    cut = only_run(tmp_path)
    if trainer == "keras":  # the weights file the metadata names, damaged on disk afterwards
        damaged = next((cut / "backup").glob("epoch-*.weights.h5"))
    else:
        damaged = cut / backup
    damaged.write_bytes(damaged.read_bytes()[:96])
    proc = run(trainer, "none", "--resume", str(cut))
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "backup is damaged" in line and "--weights" in line and "last." in line and "new run" in line
