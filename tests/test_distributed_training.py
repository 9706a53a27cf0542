"""Both trainers in two gloo processes (torchrun's variables; torchrun itself where a process is killed) against one
process with the same global batch:
torch_odir (DDP) and keras_odir on the torch backend (gradients averaged inside model.fit); errors every
process meets printed once, and a process killed mid-training."""

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import keras
import numpy as np
import pandas as pd
import pytest
import torch

import keras_odir.train as ktrain
import torch_odir.train as ttrain
from distributed_runs import TESTS, job_args, launch, rank_output, train_and_kill
from keras_odir.callbacks import BACKUP_METADATA, read_backup
from odir_core.data.synthetic import generate
from odir_core.training.run import FINISHED_FILE
from training_runs import keras_weights, only_run

TRAINERS = {"torch": ttrain.main, "keras": ktrain.main}
CHECKPOINTS = {"torch": ("best.pth", "last.pth"), "keras": ("best.keras", "last.keras")}
BACKUPS = {"torch": ttrain.BACKUP, "keras": BACKUP_METADATA}  # written last of an epoch's backup
# what the error line of each failing job says (distributed_runs.JOBS)
ERRORS = {"bad_flag": "error: argument --epochs: invalid int value: 'many'",
          "bad_split": "error: --batch-size 1 over 2 processes: a training batch of 1 patient(s)",
          "no_data": "error: --data /nonexistent/odir: not a prepared folder"}


def weights(trainer: str, run: Path) -> list[np.ndarray]:
    """The float weights of a run's last checkpoint, as float64 arrays."""
    if trainer == "torch":
        state = torch.load(run / "last.pth", weights_only=True)["state_dict"]
        return [v.double().numpy() for v in state.values() if v.is_floating_point()]
    return [np.asarray(w, np.float64) for w in keras_weights(run / "last.keras", optimizer=False).values()]


def max_difference(a, b) -> float:
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn") / "set", patients=20, size=40, seed=3)


@pytest.fixture(scope="module", params=["torch", "keras"])
def trainer(request):
    if request.param == "keras" and keras.backend.backend() != "torch":
        pytest.skip("torchrun trains keras_odir on the torch backend")
    return request.param


@pytest.fixture(scope="module")
def killed(trainer, data, tmp_path_factory):
    """torchrun's result and the run folder of a run whose rank 1 was killed (SIGKILL) after the first epoch's
    backup."""
    out = tmp_path_factory.mktemp("killed")
    proc = train_and_kill(trainer, out, data, "killed", BACKUPS[trainer], rank=1)
    return proc, only_run(out / "killed")


@pytest.fixture(scope="module")
def two(trainer, data, killed, tmp_path_factory):
    """The jobs trained by two processes, in one launch; it also resumes a copy of the killed run."""
    out = tmp_path_factory.mktemp("two")
    shutil.copytree(killed[1], out / "killed" / killed[1].name)
    launch(trainer, out, data, "frozen", "frozen_images", "fine_tuned", "straight", "cut", "resume-cut",
             *ERRORS, "resume-killed")
    return out


@pytest.fixture(scope="module")
def one(trainer, data, tmp_path_factory):
    """The reference: the same jobs trained by one process."""
    out = tmp_path_factory.mktemp("one")
    for job in ("frozen", "frozen_images", "fine_tuned"):
        assert TRAINERS[trainer](job_args(job, data, out)) == 0
    return out


@pytest.mark.parametrize("job", ["frozen", "frozen_images"])
def test_frozen_backbone_two_processes_equal_one(trainer, one, two, job):
    a, b = weights(trainer, only_run(one / job)), weights(trainer, only_run(two / job))
    assert max_difference(a, b) <= 1e-6
    assert max_difference(a, weights(trainer, only_run(one / "fine_tuned"))) > 0  # the comparison can tell runs apart


def test_validation_metrics_and_loss_of_two_processes_equal_one(trainer, one, two):
    a = pd.read_csv(only_run(one / "frozen") / "history.csv")
    b = pd.read_csv(only_run(two / "frozen") / "history.csv")
    assert list(a.columns) == list(b.columns)
    val = [c for c in a.columns if c.startswith("val_")]
    np.testing.assert_allclose(b[val], a[val], rtol=0, atol=1e-6)
    np.testing.assert_allclose(b["train_loss"], a["train_loss"], rtol=1e-5 if trainer == "keras" else 1e-6)


def test_fine_tuned_with_per_process_batchnorm_differs_from_one(trainer, one, two):
    a, b = weights(trainer, only_run(one / "fine_tuned")), weights(trainer, only_run(two / "fine_tuned"))
    # BatchNorm normalises 4 rows per process instead of 8: the same step, other statistics
    assert max_difference(a, b) > 1e-4
    assert all(np.isfinite(w).all() for w in b)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="torch's SyncBatchNorm needs two CUDA devices")
def test_fine_tuned_with_sync_bn_equals_one(data, tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS.parent), str(TESTS)])}
    args = job_args("fine_tuned", data, tmp_path) + ["--sync-bn", "--device", "cuda"]
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "torch_odir.train",
                    *args], env=env, check=True, timeout=300)
    reference = tmp_path / "reference"
    assert ttrain.main(job_args("fine_tuned", data, reference) + ["--device", "cuda"]) == 0
    assert max_difference(weights("torch", only_run(reference / "fine_tuned")),
                          weights("torch", only_run(tmp_path / "fine_tuned"))) <= 1e-5


def test_only_rank_0_writes_and_prints(trainer, two):
    codes = {"frozen": 0, "frozen_images": 0, "fine_tuned": 0, "straight": 0, "cut": 130, "resume-cut": 0,
             "bad_flag": 2, "bad_split": 2, "no_data": 2, "resume-killed": 0}
    assert json.loads((two / "codes.json").read_text()) == [codes, codes]  # rank 0's, rank 1's
    for job in ("frozen", "frozen_images", "fine_tuned", "straight"):
        run = only_run(two / job)
        assert {p.name for p in run.iterdir()} == {"config.toml", *CHECKPOINTS[trainer], "train_results.xlsx",
                                                   "history.csv", "tensorboard", "finished.json"}
    assert "Epoch 1/1" in rank_output(two, 0) and rank_output(two, 1) == ""


def test_resume_under_two_processes_equals_the_uninterrupted_run(trainer, two):
    a, b = weights(trainer, only_run(two / "straight")), weights(trainer, only_run(two / "cut"))
    assert max_difference(a, b) <= 1e-6
    assert len(pd.read_csv(only_run(two / "cut") / "history.csv")) == 2


def test_an_error_every_process_meets_is_printed_once_by_rank_0(trainer, two):
    printed = rank_output(two, 0, "stderr").splitlines()
    for line in ERRORS.values():
        assert len([p for p in printed if line in p]) == 1, line
    assert len([p for p in printed if p.startswith("Interrupted. Continue with --resume")]) == 1  # the cut job
    assert not [p for p in rank_output(two, 1, "stderr").splitlines()
                if "error:" in p or p.startswith(("usage:", "Interrupted"))]


def read_checkpoints(trainer: str, run: Path) -> list[str]:
    """Read back every checkpoint file of a run folder, its backup too (a damaged one raises); their names."""
    names = [name for name in CHECKPOINTS[trainer] if (run / name).is_file()]
    if trainer == "torch":
        for path in [run / name for name in names] + [run / ttrain.BACKUP]:
            torch.load(path, weights_only=True)
        return names + [str(ttrain.BACKUP)]
    for name in names:
        keras.saving.load_model(run / name, compile=False)
    _, backup = read_backup(run)
    with h5py.File(backup, "r") as h5:
        h5.visititems(lambda _, item: item[()] if isinstance(item, h5py.Dataset) else None)
    return names + [backup.name]


def test_a_killed_process_fails_the_run_and_leaves_its_checkpoints_whole(trainer, killed):
    proc, run = killed
    assert proc.returncode != 0
    assert re.search(r"rank\s*: 1 \(local_rank: 1\)\s*exitcode\s*: -9", proc.stderr), proc.stderr[-3000:]
    assert not (run / FINISHED_FILE).exists()
    assert CHECKPOINTS[trainer][1] in read_checkpoints(trainer, run)  # last.*, written before the backup


def test_a_run_whose_process_was_killed_resumes_under_two_processes(trainer, two):
    run = only_run(two / "killed")
    assert (run / FINISHED_FILE).is_file() and not (run / "backup").exists()
    assert len(pd.read_csv(run / "history.csv")) == 3
    assert rank_output(two, 0).count("Resuming after epoch") == 2  # this run and the cut one
