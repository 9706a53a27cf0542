"""Faults that must never look like success: a diverged (NaN) run exits non-zero in both trainers and
writes no checkpoint with non-finite weights, and predict / evaluate / convert refuse such weights.

One error story across the CLIs (odir_core.errors.run_cli): an output-side error (disk full, read-only, a file
where a folder is needed) stops a job with one line and exit 1; bad input exits 2; Ctrl-C exits 130; never a
traceback."""

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from training_runs import SMALL, only_run, tiny_train_args

import keras_odir  # noqa: F401  (torch backend unless KERAS_BACKEND says otherwise)
import odir_core.data.prepare as prepare_mod
import odir_core.data.synthetic as synthetic_mod
import odir_core.evaluation.reports as reports_mod
import torch_odir.train as ttrain
from keras_odir.convert import main as convert
from keras_odir.evaluate import main as keras_evaluate
from keras_odir.model import build_dual_model
from keras_odir.predict import main as keras_predict
from odir_core.atomic import atomic_write_text
from odir_core.data.annotations import COLUMNS, read_annotations, write_annotations
from odir_core.data.audit import main as audit
from odir_core.data.prepare import main as prepare
from odir_core.data.splits import save_split
from odir_core.data.synthetic import generate
from odir_core.data.synthetic import main as synthetic
from odir_core.errors import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    InputError,
    OutputError,
    run_cli,
    sigterm_as_interrupt,
    worker_signals,
)
from odir_core.labels import LABELS
from odir_core.training.config import TrainConfig
from odir_core.training.config_files import load_config, save_config
from odir_core.training.run import ResumeError, TrainingDiverged
from torch_odir.evaluate import main as torch_evaluate
from torch_odir.model import DualResNet50
from torch_odir.predict import main as torch_predict


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("syn") / "set", patients=20, size=40, seed=3)


def test_diverged_torch_run_exits_non_zero_and_keeps_finite_checkpoints(data, tmp_path, capsys):
    assert ttrain.main(tiny_train_args(data, tmp_path, *SMALL, "--epochs", "4", "--lr", "1e30", "--fine-tune")) == 1
    err = capsys.readouterr().err
    assert "NaN or infinite" in err and "--lr" in err and "Traceback" not in err
    run = only_run(tmp_path)
    for name in ("best.pth", "last.pth"):
        if (run / name).exists():
            state = torch.load(run / name, weights_only=True)["state_dict"]
            assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory, data):
    """A run folder holding best.keras and best.pth whose weights contain NaN."""
    root = tmp_path_factory.mktemp("poisoned")
    save_config(TrainConfig(data=str(data), image_size=32, weights="none"), root / "config.toml")
    model = DualResNet50("v0")
    with torch.no_grad():
        model.head[0].weight[0, 0] = float("nan")
    torch.save({"state_dict": model.state_dict()}, root / "best.pth")
    keras_model = build_dual_model(head="v0")
    keras_model.get_layer("head").get_layer("head_0").bias.assign(np.full(8, np.inf, "float32"))
    keras_model.save(root / "best.keras")
    return root


@pytest.mark.parametrize("suffix", [".keras", ".pth"])
def test_predict_refuses_non_finite_weights(poisoned, data, capsys, suffix):
    photos = [str(p) for p in sorted((data / "images").iterdir())[:2]]
    predict = keras_predict if suffix == ".keras" else torch_predict
    assert predict(["--model", str(poisoned / f"best{suffix}"), *photos]) == 2
    err = capsys.readouterr().err
    assert "non-finite weights" in err and "Traceback" not in err


@pytest.mark.parametrize("src,dst", [("best.pth", "out.keras"), ("best.keras", "out.pth")])
def test_convert_refuses_non_finite_weights(poisoned, tmp_path, capsys, src, dst):
    assert convert([str(poisoned / src), str(tmp_path / dst)]) == 2
    assert "non-finite weights" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------- one error story across the CLIs
# Output-side errors (disk full, read-only, a file where a folder is needed) stop a job with one line and exit 1;
# bad input exits 2; Ctrl-C exits 130; never a traceback (odir_core.errors.run_cli).

REPO = Path(__file__).resolve().parents[1]


def error_lines(err: str) -> list[str]:
    """stderr without progress bars and blank lines."""
    return [line for line in err.replace("\r", "\n").splitlines()
            if line.strip() and "%|" not in line and not line.startswith("WARNING:absl")]


def assert_one_line(err: str, *needles: str) -> str:
    lines = error_lines(err)
    assert "Traceback" not in err, err
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _mount_tmpfs(path: Path, options: str) -> None:
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          check=False, capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


@pytest.fixture
def full_disk(tmp_path):
    """A 64 KiB tmpfs: any real output fills it (ENOSPC)."""
    disk = tmp_path / "disk"
    _mount_tmpfs(disk, "size=64k")
    yield disk
    _umount(disk)


@pytest.fixture(params=["chmod-0555", "read-only-mount"])
def read_only_dir(request, tmp_path):
    """A folder nothing can be written to: mode 0o555 (not as root, which ignores modes) or a read-only tmpfs."""
    folder = tmp_path / "ro"
    if request.param == "chmod-0555":
        if os.geteuid() == 0:
            pytest.skip("root ignores file modes")
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
    else:
        _mount_tmpfs(folder, "ro,size=64k")
        yield folder
        _umount(folder)


@pytest.fixture
def a_file(tmp_path):
    """A regular file where the CLIs will be asked to make a folder (ENOTDIR / EEXIST)."""
    path = tmp_path / "a_file"
    path.write_text("not a folder")
    return path


@pytest.fixture(scope="module")
def probs_csv(data, tmp_path_factory):
    df = read_annotations(data / "annotations.xlsx")
    probs = pd.DataFrame({"ID": df["ID"]})
    for j, label in enumerate(LABELS):
        probs[label] = np.random.default_rng(j).random(len(df))
    path = tmp_path_factory.mktemp("probs") / "probs.csv"
    probs.to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def healthy(tmp_path_factory, data):
    """A run folder holding a random-weight best.pth (finite) for predict."""
    root = tmp_path_factory.mktemp("healthy")
    save_config(TrainConfig(data=str(data), image_size=32, weights="none"), root / "config.toml")
    torch.save({"state_dict": DualResNet50("v0").state_dict()}, root / "best.pth")
    return root


def _batch_csv(data, folder: Path) -> Path:
    photos = sorted((data / "images").iterdir())[:4]
    path = folder / "patients.csv"
    pd.DataFrame({"left": [str(photos[0]), str(photos[2])], "right": [str(photos[1]), str(photos[3])]}).to_csv(path, index=False)
    return path


def _write_cases(data, probs_csv, healthy, tmp_path):
    """name -> run(out_path) -> exit code, for every CLI that writes an output named on its command line."""
    return {
        "prepare": lambda out: prepare(["--source", str(data), "--out", str(out), "--size", "32", "--workers", "1"]),
        "synthetic": lambda out: synthetic(["--out", str(out), "--patients", "20", "--size", "40", "--workers", "1"]),
        "synthetic-preview": lambda out: synthetic(["--preview", str(out / "sheet.png")]),
        "keras-evaluate": lambda out: keras_evaluate(["--probs", str(probs_csv), "--data", str(data), "--out", str(out)]),
        "torch-evaluate": lambda out: torch_evaluate(["--probs", str(probs_csv), "--data", str(data), "--out", str(out)]),
        "torch-predict-batch": lambda out: torch_predict(["--model", str(healthy / "best.pth"), "--batch",
                                                          str(_batch_csv(data, tmp_path)), "--out", str(out / "p.csv")]),
        "torch-predict-figure": lambda out: torch_predict(["--model", str(healthy / "best.pth"),
                                                           *[str(p) for p in sorted((data / "images").iterdir())[:2]],
                                                           "--out", str(out / "fig.png")]),
    }


CASES = ["prepare", "synthetic", "synthetic-preview", "keras-evaluate", "torch-evaluate", "torch-predict-batch",
         "torch-predict-figure"]


@pytest.mark.parametrize("case", CASES)
def test_read_only_output_is_one_line_and_exit_1(case, read_only_dir, data, probs_csv, healthy, tmp_path, capsys):
    run = _write_cases(data, probs_csv, healthy, tmp_path)[case]
    capsys.readouterr()
    assert run(read_only_dir / "out") == EXIT_FAILURE
    assert_one_line(capsys.readouterr().err, "cannot write", str(read_only_dir))


@pytest.mark.parametrize("case", CASES)
def test_file_where_a_folder_is_needed_is_one_line_and_exit_1(case, a_file, data, probs_csv, healthy, tmp_path, capsys):
    run = _write_cases(data, probs_csv, healthy, tmp_path)[case]
    capsys.readouterr()
    assert run(a_file / "out") == EXIT_FAILURE
    assert_one_line(capsys.readouterr().err, "cannot write", str(a_file))
    assert a_file.read_text() == "not a folder"


@pytest.mark.parametrize("case", ["prepare", "synthetic", "keras-evaluate"])
def test_full_disk_stops_the_job_with_one_line_and_exit_1(case, full_disk, data, probs_csv, healthy, tmp_path, capsys):
    run = _write_cases(data, probs_csv, healthy, tmp_path)[case]
    capsys.readouterr()
    assert run(full_disk / "out") == EXIT_FAILURE
    assert_one_line(capsys.readouterr().err, "cannot write", "No space left on device", "free some space")


def test_prepare_full_disk_with_a_worker_pool_is_one_line_and_exit_1(full_disk, data, capsys):
    assert prepare(["--source", str(data), "--out", str(full_disk / "out"), "--size", "64", "--workers", "2"]) == 1
    assert_one_line(capsys.readouterr().err, "No space left on device", "rerun resumes")


def test_prepare_stops_at_once_when_the_disk_fills_simulated(data, tmp_path, monkeypatch, capsys):
    """Portable: the image write raises ENOSPC after two images. Before, every later image was reported as a
    bad image and the run ended 'N of M patients written', exit 0."""
    real_save, written = prepare_mod.save_image, []

    def save_image(img, path, quality=95):
        if len(written) >= 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(img, path, quality)
        written.append(path)

    monkeypatch.setattr(prepare_mod, "save_image", save_image)
    out = tmp_path / "out"
    assert prepare(["--source", str(data), "--out", str(out), "--size", "32", "--workers", "1"]) == EXIT_FAILURE
    line = assert_one_line(capsys.readouterr().err, "No space left on device", "rerun resumes")
    assert "images" in line  # names the file it could not write
    assert len(list((out / "images").iterdir())) == 2  # finished work is kept
    report = pd.read_csv(out / "prepare_report.csv")
    assert not report["reason"].astype(str).str.contains("No space").any()  # not 'bad images'
    assert not (out / "annotations.xlsx").exists()
    monkeypatch.setattr(prepare_mod, "save_image", real_save)
    assert prepare(["--source", str(data), "--out", str(out), "--size", "32", "--workers", "1"]) == EXIT_OK  # resumes
    assert len(read_annotations(out / "annotations.xlsx")) == len(read_annotations(data / "annotations.xlsx"))


def test_synthetic_and_evaluate_disk_full_simulated(data, probs_csv, tmp_path, monkeypatch, capsys):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(synthetic_mod, "write_annotations", no_space)
    assert synthetic(["--out", str(tmp_path / "syn"), "--patients", "2", "--size", "32", "--workers", "1"]) == 1
    assert_one_line(capsys.readouterr().err, f"cannot write {tmp_path / 'syn'}: No space left on device")
    assert not (tmp_path / "syn").exists()
    monkeypatch.setattr(reports_mod, "write_label_xlsx", no_space)
    assert keras_evaluate(["--probs", str(probs_csv), "--data", str(data), "--out", str(tmp_path / "ev")]) == 1
    assert_one_line(capsys.readouterr().err, f"cannot write {tmp_path / 'ev'}: No space left on device")
    assert not (tmp_path / "ev").exists()


def _check_trainer_run_folder_error(data, root: Path, capsys) -> None:
    assert ttrain.main(tiny_train_args(data, root / "runs", *SMALL, "--epochs", "1")) == EXIT_FAILURE
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert [line for line in error_lines(err) if line.startswith("error:")] == [error_lines(err)[-1]]
    assert f"cannot write {root}" in error_lines(err)[-1] and "choose an" in error_lines(err)[-1]


def test_read_only_run_folder_is_one_line_and_exit_1_in_the_trainer(data, read_only_dir, capsys):
    _check_trainer_run_folder_error(data, read_only_dir, capsys)


def test_file_as_run_folder_is_one_line_and_exit_1_in_the_trainer(data, a_file, capsys):
    _check_trainer_run_folder_error(data, a_file, capsys)


def test_tfds_build_into_a_file_is_one_line_and_exit_1(data, a_file, capsys):
    pytest.importorskip("tensorflow_datasets")
    from odir_core.data.tfds.cli import main as tfds_main

    rc = tfds_main(["build", "--source", str(data), "--variant", "prepared_32", "--data-dir", str(a_file / "tfds"),
                    "--workers", "1"])
    assert rc == EXIT_FAILURE
    assert_one_line(capsys.readouterr().err, f"cannot write {a_file}", "Not a directory", "choose another output path")


def _slow_source(root: Path) -> Path:
    """A prepared-layout source of 30 patients whose photographs are large PNGs: prepare takes a few seconds."""
    generate(root, 30, size=64, seed=0, workers=1)
    photos = sorted((root / "images").iterdir())
    big = {}
    for side in ("left", "right"):
        img = cv2.resize(cv2.imread(str(root / "images" / f"0_{side}.jpg")), (1400, 1400))
        big[side] = cv2.imencode(".png", img, [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].tobytes()
    for photo in photos:
        photo.write_bytes(big["left" if "left" in photo.name else "right"])
    return root


def test_ctrl_c_in_prepare_is_one_line_exit_130_and_no_worker_tracebacks(tmp_path):
    source, out = _slow_source(tmp_path / "src"), tmp_path / "out"
    proc = subprocess.Popen(
        [sys.executable, "-m", "odir_core.prepare", "--source", str(source), "--out", str(out), "--size", "64",
         "--workers", "2"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        # Ctrl-C's default action, as a terminal's shell gives it: a child inherits an ignored SIGINT (from a test
        # process where something ignores it, or a background job) and prepare rightly keeps ignoring it then
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:  # Ctrl-C once the workers are writing images
        if (out / "images").is_dir() and len(list((out / "images").glob("*.png"))) >= 2:
            break
        time.sleep(0.02)
    if proc.poll() is not None:
        pytest.skip("prepare finished before it could be interrupted")
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal does: the parent and its workers
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert_one_line(err, "interrupted")
    assert len(list((out / "images").glob("*.png"))) < 60  # it stopped early, keeping what it wrote


def _task_that_outlives_exceptions(seconds: float) -> str:
    """Sleeps ``seconds`` whatever is raised meanwhile, as code where Python ignores exceptions (a ``__del__``)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            time.sleep(0.02)
        except BaseException:  # noqa: B036 - the point: the worker's SIGTERM exception goes nowhere
            pass
    return "survived"


def test_pool_terminate_ends_a_forked_worker_inside_a_cli():
    # A forked pool worker inherits the CLI's SIGTERM handler (an exception); worker_signals gives it SIGTERM's
    # default, so terminate() ends it wherever it is and join() returns (it once waited for ever).
    import multiprocessing
    import threading

    with sigterm_as_interrupt():
        pool = multiprocessing.get_context("fork").Pool(1, worker_signals)
        workers = list(pool._pool)
        pool.apply_async(_task_that_outlives_exceptions, (60,))
        time.sleep(1.0)  # the worker is inside the task
        stopper = threading.Thread(target=lambda: (pool.terminate(), pool.join()), daemon=True)
        stopper.start()
        stopper.join(timeout=20)
    hung = stopper.is_alive()
    for worker in workers:
        if worker.is_alive():
            os.kill(worker.pid, signal.SIGKILL)
    assert not hung, "pool.terminate() left a worker running"


def _header_only(folder: Path, suffix: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"annotations{suffix}"
    empty = pd.DataFrame(columns=COLUMNS)
    if suffix == ".csv":
        empty.to_csv(path, index=False)
    else:
        empty.to_excel(path, index=False)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".xlsx"])
def test_header_only_annotations_exit_2_naming_the_file(suffix, data, tmp_path, capsys):
    path = _header_only(tmp_path / "a", suffix)
    assert audit([str(path)]) == EXIT_USAGE
    assert_one_line(capsys.readouterr().err, str(path), "no patient rows")
    # a prepared folder with a header-only annotations.xlsx, for prepare and the trainers
    folder = tmp_path / "prepared"
    (folder / "images").mkdir(parents=True)
    for photo in sorted((data / "images").iterdir())[:2]:
        (folder / "images" / photo.name).write_bytes(photo.read_bytes())
    ann = folder / "annotations.xlsx"
    _header_only(tmp_path / "b", ".xlsx").rename(ann)
    assert prepare(["--source", str(folder), "--out", str(tmp_path / "out"), "--size", "32", "--workers", "1"]) == 2
    assert_one_line(capsys.readouterr().err, str(ann), "no patient rows")
    assert ttrain.main(tiny_train_args(folder, tmp_path / "runs", "--epochs", "1")) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"error: {ann}: no patient rows" in err


def test_written_files_follow_the_umask(tmp_path, data):
    old = os.umask(0o022)
    try:
        df = read_annotations(data / "annotations.xlsx")
        paths = [write_annotations(df, tmp_path / "annotations.xlsx"), write_annotations(df, tmp_path / "a.csv"),
                 save_split(tmp_path / "split.json", df["ID"][:10], df["ID"][10:]),
                 atomic_write_text(tmp_path / "t.txt", "x")]
        assert prepare(["--source", str(data), "--out", str(tmp_path / "out"), "--size", "32", "--workers", "1"]) == 0
        paths += [tmp_path / "out" / "annotations.xlsx", tmp_path / "out" / "prepare_report.csv",
                  *sorted((tmp_path / "out" / "images").iterdir())[:2]]
        for path in paths:
            assert Path(path).stat().st_mode & 0o777 == 0o644, path
    finally:
        os.umask(old)


@pytest.mark.parametrize("flags,minimum", [(["--size", "0"], 16), (["--size", "15"], 16), (["--size", "-3"], 16),
                                           (["--size", "0", "--layout", "kaggle"], 64)])
def test_synthetic_rejects_a_size_below_the_minimum(flags, minimum, tmp_path, capsys):
    assert synthetic(["--out", str(tmp_path / "s"), "--patients", "2", "--workers", "1", *flags]) == EXIT_USAGE
    assert_one_line(capsys.readouterr().err, f"at least {minimum} px")
    assert not (tmp_path / "s").exists()


def test_run_cli_maps_errors_to_one_line_and_exit_codes(capsys):
    def raising(exc):
        def fn():
            raise exc
        return fn

    cases = [
        (InputError("bad flag"), EXIT_USAGE, "error: bad flag"),
        (ValueError("bad value"), EXIT_USAGE, "error: bad value"),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "x.csv"), EXIT_USAGE, "x.csv"),
        (OutputError("cannot write y"), EXIT_FAILURE, "error: cannot write y"),
        (TrainingDiverged("epoch 1: NaN"), EXIT_FAILURE, "error: epoch 1: NaN"),
        (OSError(errno.EROFS, "Read-only file system", "/ro"), EXIT_FAILURE, "/ro: Read-only file system"),
        (OSError(errno.ENOSPC, "No space left on device"), EXIT_FAILURE, "cannot write No space left on device"),
        (KeyboardInterrupt(), EXIT_INTERRUPTED, "interrupted"),
    ]
    for exc, code, needle in cases:
        assert run_cli(raising(exc)) == code
        assert_one_line(capsys.readouterr().err, needle)
    assert run_cli(lambda: None) == EXIT_OK and run_cli(lambda: 3) == 3
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        run_cli(lambda: 1 / 0)


# ----------------------------------------------------------------------------- starting and resuming runs

@pytest.mark.parametrize("make", ["resnet18 backbone", "dual v1"])
def test_torch_weights_of_another_architecture_are_one_line_and_no_run_folder(make, data, tmp_path, capsys):
    import torchvision

    weights = tmp_path / "other.pth"
    if make == "resnet18 backbone":
        torch.save(torchvision.models.resnet18().state_dict(), weights)
    else:
        torch.save(DualResNet50("v1").state_dict(), weights)
    runs = tmp_path / "runs"
    args = tiny_train_args(data, runs, "--epochs", "1")
    args[args.index("--weights") + 1] = str(weights)
    assert ttrain.main(args) == 2
    err = capsys.readouterr().err
    assert str(weights) in err and "--backbone" in err and "Traceback" not in err
    assert not any(runs.iterdir())  # a failed start leaves no run folder holding only config.toml


def test_keras_weights_of_another_architecture_are_one_line_and_no_run_folder(data, tmp_path, capsys):
    """Before: Keras' 'You called set_weights(weights) ... with a weight list of length 102'."""
    import keras_odir.train as ktrain

    weights = tmp_path / "other.keras"
    build_dual_model("resnet18", "v1", image_size=32).save(weights)
    runs = tmp_path / "runs"
    args = tiny_train_args(data, runs, "--epochs", "1")
    args[args.index("--weights") + 1] = str(weights)
    assert ktrain.main(args) == 2
    assert_one_line(capsys.readouterr().err, f"--weights {weights} holds backbone resnet18 with head v1",
                    "pass --backbone resnet18 --head v1")
    assert not any(runs.iterdir())


def test_torch_trainer_names_the_conversion_for_keras_weights(data, tmp_path, capsys):
    """torch_odir reads PyTorch files only (before: 'not a readable PyTorch checkpoint (RuntimeError ...)')."""
    weights = tmp_path / "best.keras"
    weights.write_bytes(b"PK")
    args = tiny_train_args(data, tmp_path / "runs", "--epochs", "1")
    args[args.index("--weights") + 1] = str(weights)
    assert ttrain.main(args) == 2
    assert_one_line(capsys.readouterr().err, "torch_odir starts from PyTorch files",
                    f"python -m keras_odir.convert {weights} best.pth")


@pytest.mark.parametrize("trainer", ["keras", "torch"])
def test_interrupted_first_epoch_removes_the_new_run_folder(trainer, data, tmp_path, monkeypatch, capsys):
    import keras_odir.train as ktrain

    module = ktrain if trainer == "keras" else ttrain

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    # Ctrl-C while the training data is being set up, after the run folder and config.toml exist
    monkeypatch.setattr(module, "run_datasets", interrupted)
    assert module.main(tiny_train_args(data, tmp_path, "--epochs", "1")) == 130
    err = capsys.readouterr()
    assert "nothing to resume" in err.err and "Traceback" not in err.err and "Removed" in err.out
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("trainer,full_at_epoch", [("keras", 1), ("torch", 2)])
def test_disk_full_in_the_run_folder_names_it_and_keeps_what_was_saved(trainer, full_at_epoch, data, tmp_path,
                                                                        monkeypatch, capsys):
    """A full disk raises ENOSPC without a file name (before: 'cannot write No space left on device')."""
    import contextlib

    import keras_odir.train as ktrain
    import odir_core.training.history as history_mod

    module = ktrain if trainer == "keras" else ttrain
    real_atomic_path, calls = history_mod.atomic_path, []

    @contextlib.contextmanager
    def filling_disk(path):
        calls.append(path)
        if len(calls) > 2 * (full_at_epoch - 1):  # two history files per epoch
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        with real_atomic_path(path) as tmp:
            yield tmp

    monkeypatch.setattr(history_mod, "atomic_path", filling_disk)
    runs = tmp_path / "runs"
    assert module.main(tiny_train_args(data, runs, "--epochs", "2", "--backbone", "resnet18")) == EXIT_FAILURE
    captured = capsys.readouterr()
    line = [line for line in error_lines(captured.err) if line.startswith("error:")]
    assert len(line) == 1 and "Traceback" not in captured.err, captured.err
    assert f"cannot write {runs}" in line[0] and "No space left on device; free some space" in line[0]
    if full_at_epoch == 1:
        assert "the run stopped before its first epoch was saved" in captured.out
        assert not any(runs.iterdir())
    else:
        run_dir = only_run(runs)
        assert (run_dir / "history.csv").is_file() and not (run_dir / "finished.json").exists()


def test_resume_of_a_folder_that_is_not_a_run_is_one_error(data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        ttrain.main(["--resume", str(tmp_path)])
    assert exit_info.value.code == 2
    assert "no config.toml there" in capsys.readouterr().err
    config = TrainConfig(resume=str(tmp_path), data=str(data))  # the API checks it too
    with pytest.raises(ResumeError, match="not a run folder"):
        ttrain.train(config, log=lambda line: None)


def test_resume_without_a_backup_after_saved_epochs_points_to_the_last_model(tmp_path):
    """A backup removed by hand after epochs were saved (before: 'stopped before the backup of its first
    epoch was written', which was false)."""
    from odir_core.training.run import check_resumable

    for name in ("config.toml", "history.csv", "last.pth"):
        (tmp_path / name).write_text("x")
    with pytest.raises(ResumeError, match=rf"backup is missing .* --weights {tmp_path / 'last.pth'} "):
        check_resumable(tmp_path, Path("backup/state.pth"))
    (tmp_path / "history.csv").unlink()
    with pytest.raises(ResumeError, match="before the backup of its first epoch was written"):
        check_resumable(tmp_path, Path("backup/state.pth"))


def test_config_records_the_data_folder_as_an_absolute_path(data, tmp_path, monkeypatch):
    monkeypatch.chdir(data.parent)
    assert ttrain.main(tiny_train_args(Path(data.name), tmp_path, *SMALL, "--epochs", "1")) == 0
    assert Path(load_config(only_run(tmp_path) / "config.toml").data) == data.resolve()


def test_load_model_needs_only_import_keras_odir(tmp_path):
    """A fresh process that imports keras_odir (nothing else of it) reads a keras_odir .keras file."""
    model = build_dual_model("resnet18", "v2", image_size=32)
    model.save(tmp_path / "m.keras")
    script = ("import keras_odir, keras; m = keras.saving.load_model(r'%s'); "
              "print(m.count_params())" % (tmp_path / "m.keras"))
    env = {**os.environ, "KERAS_BACKEND": "torch"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split()[0] == str(model.count_params())
