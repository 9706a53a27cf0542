"""Run folders are data, never code, and hold one process at a time: a crafted backup executes nothing,
``--resume`` removes no file it did not write and changes nothing before its checks pass, a run in use is
refused, and SIGTERM stops a run, or ``prepare``, as Ctrl-C does."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from odir_core.atomic import atomic_path, is_temporary, remove_stale_temporaries
from odir_core.data.synthetic import generate
from odir_core.errors import EXIT_TERMINATED, EXIT_USAGE
from odir_core.training.run import remove_new_run
from odir_core.training.run_lock import LOCK_FILE, RunInUseError, RunLock
import warm_processes
from test_faults import _slow_source as slow_source
from training_runs import only_run, tiny_train_args

REPO = Path(__file__).resolve().parents[1]
CRASH = Path(__file__).with_name("crash_run.py")
FLAGS = ("--backbone", "resnet18", "--fine-tune", "--epochs", "3", "--patience", "0", "--lr", "0.002")
KILL_MID_BACKUP = {"keras": "backup-weights", "torch": "backup-state"}
USER_FILES = (".notes.md", "backup/.keep", "tensorboard/.keep")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn") / "set", patients=20, size=40, seed=3)


def _env() -> dict:
    return {**os.environ, "KERAS_BACKEND": "torch", "PYTHONPATH": str(Path(__file__).parent)}


def crash_run(trainer: str, point: str, *flags) -> subprocess.CompletedProcess:
    return warm_processes.run([sys.executable, str(CRASH), trainer, point, *flags], env=_env(), timeout=900, cwd=REPO)


def trainer_run(module: str, *flags: str) -> subprocess.CompletedProcess:
    return warm_processes.run([sys.executable, "-m", module, *flags], env=_env(), timeout=900, cwd=REPO)


def one_error_line(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time, but the lock (a refused command takes
    over the lock file a dead process left, and removes it)."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != LOCK_FILE}


@pytest.fixture(scope="module")
def killed(data, tmp_path_factory):
    """A run of each trainer killed while writing epoch 2's backup: resumable from epoch 1, with the killed
    write's temporary file left behind."""
    out = {}
    for trainer, point in KILL_MID_BACKUP.items():
        root = tmp_path_factory.mktemp(f"killed-{trainer}")
        proc = crash_run(trainer, point, *tiny_train_args(data, root, *FLAGS))
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
        out[trainer] = only_run(root)
    return out


@pytest.mark.parametrize("trainer", ["keras", "torch"])
def test_resume_refuses_changes_and_a_live_owner_then_keeps_every_user_file(killed, trainer):
    run_dir = killed[trainer]
    temporaries = [p for p in (run_dir / "backup").iterdir() if is_temporary(p)]
    assert temporaries, sorted(p.name for p in (run_dir / "backup").iterdir())  # what the kill left
    for name in USER_FILES:
        (run_dir / name).write_text("mine\n")
    before = snapshot(run_dir)
    module = f"{trainer}_odir.train"

    # a flag that changes the network is refused before anything is written
    proc = trainer_run(module, "--resume", str(run_dir), "--backbone", "resnet34")
    assert proc.returncode == EXIT_USAGE
    one_error_line(proc, "--backbone resnet34", "resnet18", "config.toml")
    assert snapshot(run_dir) == before

    # a run folder held by a live process is refused, naming it
    lock = RunLock(run_dir).acquire()
    try:
        proc = trainer_run(module, "--resume", str(run_dir))
    finally:
        lock.release()
    assert proc.returncode == EXIT_USAGE
    one_error_line(proc, f"in use by process {os.getpid()} on {socket.gethostname()}")
    assert snapshot(run_dir) == before

    # the lock file a dead process left is taken over; the run then finishes
    (run_dir / LOCK_FILE).write_text(json.dumps({"pid": 999999999, "host": socket.gethostname()}) + "\n")
    proc = trainer_run(module, "--resume", str(run_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run_dir / "finished.json").is_file()
    for name in USER_FILES:
        assert (run_dir / name).read_text() == "mine\n", name
    assert sorted(p.name for p in (run_dir / "backup").iterdir()) == [".keep"]  # the backup's own files went
    assert not (run_dir / LOCK_FILE).exists()


class Marker:
    """Pickled, it runs ``touch PATH`` when unpickled (what a hostile file would do)."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory):
    """A finished one-epoch run of each trainer."""
    out = {}
    for trainer in ("keras", "torch"):
        root = tmp_path_factory.mktemp(f"finished-{trainer}")
        proc = crash_run(trainer, "none", *tiny_train_args(data, root, "--backbone", "resnet18", "--epochs", "1"))
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[trainer] = only_run(root)
    return out


def _unfinished_copy(run_dir: Path, target: Path) -> Path:
    """The run's config and history without finished.json: a run that looks resumable."""
    target.mkdir()
    for name in ("config.toml", "history.csv"):
        (target / name).write_bytes((run_dir / name).read_bytes())
    (target / "backup").mkdir()
    return target


def test_a_crafted_torch_backup_runs_no_code(finished, tmp_path):
    import torch

    marker = tmp_path / "code-ran"
    run_dir = _unfinished_copy(finished["torch"], tmp_path / "run")
    torch.save({"epoch": 1, "model": Marker(marker)}, run_dir / "backup" / "state.pth")
    proc = trainer_run("torch_odir.train", "--resume", str(run_dir))
    assert proc.returncode == EXIT_USAGE
    one_error_line(proc, "backup is damaged", "refused", "could run code")
    assert not marker.exists()
    assert not (run_dir / LOCK_FILE).exists()


@pytest.mark.parametrize("craft", ["pickle-as-weights", "pickle-in-hdf5", "path-outside"])
def test_a_crafted_keras_backup_runs_no_code_and_reads_nothing_outside(finished, tmp_path, craft):
    import pickle

    marker = tmp_path / "code-ran"
    run_dir = _unfinished_copy(finished["keras"], tmp_path / "run")
    weights = "epoch-0000.weights.h5"
    payload = pickle.dumps(Marker(marker))
    if craft == "pickle-as-weights":
        (run_dir / "backup" / weights).write_bytes(payload)
    elif craft == "pickle-in-hdf5":
        with h5py.File(run_dir / "backup" / weights, "w") as h5:
            h5.create_dataset("layers/head_0/vars/0", data=np.void(payload))
    else:
        outside = tmp_path / "elsewhere.weights.h5"
        with h5py.File(outside, "w") as h5:
            h5.create_dataset("x", data=np.zeros(3))
        weights = "../../elsewhere.weights.h5"
    (run_dir / "backup" / "training_metadata.json").write_text(json.dumps({"epoch": 1, "weights": weights}))
    proc = trainer_run("keras_odir.train", "--resume", str(run_dir), "--epochs", "2")
    assert proc.returncode == EXIT_USAGE, proc.stderr[-3000:]
    one_error_line(proc, "backup is damaged")
    assert not marker.exists()
    assert sorted(p.name for p in run_dir.iterdir()) == ["backup", "config.toml", "history.csv"]


def test_only_the_projects_own_temporaries_are_removed(tmp_path):
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "best.keras") as tmp:
        left = tmp_path / tmp.name.replace(".best.", ".kept.")
        os.link(tmp, left)  # a temporary a kill would leave behind
        raise RuntimeError
    for name in (".notes.md", ".keep", ".best.keras.swp", ".config.toml.abcdefgh"):
        (tmp_path / name).write_text("mine")
    assert remove_stale_temporaries(tmp_path) == [left]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".best.keras.swp", ".config.toml.abcdefgh", ".keep",
                                                          ".notes.md"]


def _new_run_with_logs(run_dir: Path) -> None:
    """A new run's config.toml and TensorBoard event files, as the trainers write them."""
    from odir_core.training.tensorboard import ScalarWriter

    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text("x = 1\n")
    writer = ScalarWriter(run_dir / "tensorboard")
    writer.add_scalars("Loss", {"train": 0.3, "val": 0.4}, 1)
    writer.close()


def test_a_failed_new_run_removes_only_what_it_wrote(tmp_path):
    run_dir = tmp_path / "t-20260101-000000"
    _new_run_with_logs(run_dir)
    assert remove_new_run(run_dir) and not run_dir.exists()
    _new_run_with_logs(run_dir)
    for name in ("mine.txt", "tensorboard/.keep", "tensorboard/Loss_train/notes.md"):
        (run_dir / name).write_text("mine")
    assert not remove_new_run(run_dir)
    assert sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file()) == [
        "mine.txt", "tensorboard/.keep", "tensorboard/Loss_train/notes.md"]


def test_a_run_lock_is_one_process_at_a_time(tmp_path):
    first = RunLock(tmp_path).acquire()
    owner = json.loads((tmp_path / LOCK_FILE).read_text())
    assert owner == {"pid": os.getpid(), "host": socket.gethostname()}
    # another process cannot take it while this one holds it
    code = ("import sys; from odir_core.training.run_lock import RunLock, RunInUseError\n"
            "try:\n    RunLock(sys.argv[1]).acquire()\nexcept RunInUseError as e:\n    print(e); sys.exit(3)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 3 and f"process {os.getpid()}" in proc.stdout
    first.release()
    assert not (tmp_path / LOCK_FILE).exists()
    # a process that dies holding it leaves the file, and the lock is free
    proc = subprocess.run([sys.executable, "-c", "import os, sys; from odir_core.training.run_lock import RunLock; "
                           "RunLock(sys.argv[1]).acquire(); os._exit(0)", str(tmp_path)], cwd=REPO)
    assert proc.returncode == 0 and (tmp_path / LOCK_FILE).exists()
    RunLock(tmp_path).acquire().release()
    with pytest.raises(RunInUseError):  # within one process a second holder is refused too
        held = RunLock(tmp_path).acquire()
        try:
            RunLock(tmp_path).acquire()
        finally:
            held.release()


def _terminate_when(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline and not ready():
        time.sleep(0.02)
    if proc.poll() is not None:
        pytest.fail(f"the command ended before SIGTERM: {proc.communicate()[1][-2000:]}")
    proc.send_signal(signal.SIGTERM)  # only the main process, as docker stop does


@pytest.mark.parametrize("trainer", ["keras", "torch"])
def test_sigterm_in_a_new_runs_first_epoch_removes_its_folder(data, tmp_path, trainer):
    root = tmp_path / "runs"
    args = tiny_train_args(data, root, "--backbone", "resnet18", "--epochs", "1")
    proc = warm_processes.start([sys.executable, "-m", f"{trainer}_odir.train", *args], env=_env(), cwd=REPO)
    _terminate_when(proc, lambda: any(root.glob("*/config.toml")))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == EXIT_TERMINATED, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert "Removed" in out + err
    assert list(root.iterdir()) == []


def test_sigterm_in_prepare_keeps_the_images_written_and_a_rerun_resumes(tmp_path):
    source = slow_source(tmp_path / "src")
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    for name in (".keep", "images/.keep"):
        (out / name).write_text("mine")
    command = [sys.executable, "-m", "odir_core.prepare", "--source", str(source), "--out", str(out), "--size", "64",
               "--workers", "1"]
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _terminate_when(proc, lambda: len(list((out / "images").glob("*.png"))) >= 2)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_TERMINATED, err[-3000:]
    assert "Traceback" not in err and "images written so far are kept" in err, err[-3000:]
    assert not (out / "annotations.xlsx").exists()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (out / "annotations.xlsx").is_file()
    for name in (".keep", "images/.keep"):
        assert (out / name).read_text() == "mine"


@pytest.mark.parametrize("patient_id", ["1e30", "99999999999999999999", "-1e19"])
def test_an_id_beyond_64_bits_in_a_label_file_is_named_not_wrapped(tmp_path, patient_id):
    from odir_core.evaluation.submission import read_label_file
    from odir_core.scores import MetricsError

    path = tmp_path / "probs.csv"
    path.write_text("ID,N,D,G,C,A,H,M,O\n0,0,0,0,0,0,0,0,1\n" + patient_id + ",1,0,0,0,0,0,0,0\n")
    with pytest.raises(MetricsError, match=r"probs.csv: column ID, row 3 .* is not an integer patient ID from -2\*\*63"):
        read_label_file(path)
