"""Framework-free orchestration of a training run, shared by ``keras_odir.train`` and ``torch_odir.train``.

``setup_run(config)`` resolves the data source, reads the annotations, splits them, computes
``pos_weight``, creates (or reopens, for ``--resume``) the run folder and writes ``config.toml``.

A run folder's life: ``config.toml`` first; per finished epoch the history, the checkpoints and then
the backup (``backup/``, the trainer's own format, each file replaced atomically); at the end
``finished.json``, written last, and the backup is removed. So ``--resume`` can tell a finished run
(``finished.json``), a run to continue (a backup) and one that stopped before its first epoch was saved
(neither), and a new run that fails or is interrupted before its first epoch was saved removes its folder.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from odir_core.annotations import label_matrix, read_annotations
from odir_core.atomic import atomic_write_text
from odir_core.class_weights import pos_weight_from_labels
from odir_core.config import PREPARED_ODIR, TrainConfig, parse_args, save_config
from odir_core.console import duration
from odir_core.distributed import Ranks
from odir_core.errors import EXIT_INTERRUPTED, InputError, OdirError, run_cli, write_failure, writing
from odir_core.labels import LABELS
from odir_core.history import HISTORY_FILE
from odir_core.layouts import PREPARED, is_prepared
from odir_core.provenance import training_record
from odir_core.splits import check_training_split, split_frames
from odir_core.tfds import source as tfds_source

CONFIG_FILE = "config.toml"
FINISHED_FILE = "finished.json"  # written last by a run that ended normally (all epochs or early stopping)
BACKUP_DIR = "backup"


class DataSourceError(InputError):
    """The data option names nothing usable (message says what to pass instead)."""


class TrainingDiverged(OdirError, RuntimeError):
    """The loss became NaN or infinite: the run stopped, and no checkpoint holds the diverged weights (exit 1)."""

    every_rank = True  # every process of a distributed run computes the same metrics and stops on the same epoch


def diverged_message(epoch: int, best_epoch: int | None, best_file: str) -> str:
    """One line for a run whose loss became NaN or infinite in ``epoch`` (0-based)."""
    kept = f"{best_file} (epoch {best_epoch + 1}) is kept" if best_epoch is not None else "no checkpoint was saved"
    return (f"epoch {epoch + 1}: the loss became NaN or infinite; training stopped and {kept}. "
            "Lower the learning rate (--lr) or check the data, and start a new run.")


class ResumeError(InputError):
    """``--resume`` names a run that cannot be continued (finished, no epoch completed, damaged backup)."""


class StoppedBeforeFirstEpoch(OdirError):
    """Ctrl-C before a new run's first epoch was saved: its folder was removed, there is nothing to resume."""

    exit_code = EXIT_INTERRUPTED


def damaged_backup_message(backup: Path, reason: str, run_dir: Path, last_model: str) -> str:
    """One line for a backup that cannot be read, saying what can still be done."""
    return (f"{backup}: the backup is damaged ({reason}); the run cannot continue from it. Start a new run, or "
            f"one from the last saved epoch with --weights {run_dir / last_model} (the optimizer starts afresh)")


@dataclass
class RunSetup:
    """Everything a trainer needs besides the network: resolved config, folders, split, weights, and what
    its checkpoints record they were trained on (``odir_core.provenance``)."""

    config: TrainConfig
    run_dir: Path
    data_dir: Path
    train_df: pd.DataFrame
    val_df: pd.DataFrame
    pos_weight: np.ndarray | None
    resumed: bool
    trained_on: dict = field(default_factory=dict)

    @property
    def y_train(self) -> np.ndarray:
        return label_matrix(self.train_df)

    @property
    def y_val(self) -> np.ndarray:
        return label_matrix(self.val_df)


def resolve_data(data: str, log: Callable[[str], None] = print, demo_patients: int = 600) -> tuple[Path, str]:
    """The prepared folder to train on and a one-line description of it.

    ``data``: a prepared folder; ``"synthetic"``; or empty: ``data/odir5k`` when a prepared ODIR-5K
    is there, else the synthetic demo set (generated once under ``data/synthetic/``).
    """
    if tfds_source.is_tfds_source(data):  # tfds:odir5k/CONFIG or a built TFDS dataset folder
        try:
            path = tfds_source.resolve(data)
        except tfds_source.TfdsSourceError as exc:
            raise DataSourceError(str(exc)) from None
        return path, f"TFDS dataset {path}"
    if data == "":
        if is_prepared(PREPARED_ODIR):
            return PREPARED_ODIR, f"prepared ODIR-5K in {PREPARED_ODIR}"
        log(
            f"No data given and no prepared ODIR-5K under {PREPARED_ODIR}/: training on the SYNTHETIC "
            "demo set (ODIR-like generated images, not real fundus photographs). For ODIR-5K run "
            f"`python -m odir_core.prepare --source PATH --out {PREPARED_ODIR}` or pass --data DIR."
        )
        data = "synthetic"
    if data == "synthetic":
        from odir_core.synthetic import demo_dataset

        path = Path(demo_dataset(patients=demo_patients))
        return path, f"synthetic demo set in {path}"
    path = Path(data)
    if not is_prepared(path):
        raise DataSourceError(
            f"--data {data}: not a prepared folder (needs {PREPARED.annotations} and {PREPARED.images}/); "
            f"create one with `python -m odir_core.prepare --source RAW --out {data}`, or pass --data synthetic"
        )
    return path, f"prepared folder {path}"


def new_run_dir(run_root: str | Path, experiment: str) -> Path:
    """Create ``run_root/<experiment>-<YYYYmmdd-HHMMSS>`` (suffix -2, -3 ... if taken); never reuses one."""
    root = Path(run_root)
    with writing(root):
        root.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        path = root / (f"{experiment}-{stamp}" if n == 1 else f"{experiment}-{stamp}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"{root}: could not create a new run folder for {experiment}-{stamp}")


def setup_run(config: TrainConfig, backup: Path, log: Callable[[str], None] = print) -> RunSetup:
    """Resolve data and split, create the run folder (or check the one to resume, whose trainer's backup
    file is ``backup`` relative to it) and write the resolved ``config.toml``."""
    data_dir, description = resolve_data(config.data, log, config.demo_patients)
    log(f"Data: {description}")
    if tfds_source.is_tfds_source(data_dir):
        train_df, val_df = tfds_source.split_frames(data_dir, config.split)
    else:
        df = read_annotations(data_dir / PREPARED.annotations)
        train_df, val_df = split_frames(df, config.split, data_dir / PREPARED.annotations)
    log(f"Split {config.split}: {len(train_df)} training and {len(val_df)} validation patients")
    check_training_split(len(train_df), len(val_df), config.split, data_dir)
    pos_weight = None
    if config.weighted_loss:
        pos_weight = np.asarray(pos_weight_from_labels(label_matrix(train_df)), dtype=np.float32)
        log("pos_weight (negatives/positives): " + ", ".join(f"{k} {w:.2f}" for k, w in zip(LABELS, pos_weight)))
    if config.resume:
        run_dir = Path(config.resume)
        check_resumable(run_dir, backup)
        resumed = True
        log(f"Resuming run {run_dir}")
    else:
        run_dir = new_run_dir(config.run_dir, config.experiment)
        resumed = False
        log(f"Run folder: {run_dir}")
    # an absolute data path, so that --resume and the run's config work from any folder
    data = str(data_dir) if tfds_source.is_tfds_source(str(data_dir)) else str(Path(data_dir).resolve())
    resolved = config.replace(data=data, resume="", run_dir=str(Path(config.run_dir)))
    try:
        save_config(resolved, run_dir / CONFIG_FILE)
    except BaseException:
        if not resumed:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    from odir_core.synthetic import is_synthetic

    trained_on = training_record(data, is_synthetic(data_dir), run_dir, config.experiment)
    return RunSetup(resolved, run_dir, data_dir, train_df, val_df, pos_weight, resumed, trained_on)


def check_resumable(run_dir: Path, backup: Path) -> None:
    """Refuse ``--resume run_dir`` with one line unless it holds a backup (``backup``, relative to it) to
    continue from; remove the temporary files a killed run left behind."""
    if not (run_dir / CONFIG_FILE).is_file():
        raise ResumeError(f"--resume {run_dir}: not a run folder (no {CONFIG_FILE}); pass a folder under runs/")
    if (run_dir / FINISHED_FILE).is_file():
        raise ResumeError(f"{run_dir}: the run has finished ({FINISHED_FILE}); start a new run "
                          f"(--weights RUN/best.* starts one from its best model)")
    if not (run_dir / backup).is_file():
        saved = sorted(run_dir.glob("last.*")) if (run_dir / HISTORY_FILE).is_file() else []
        if saved:
            raise ResumeError(f"{run_dir}: its backup is missing (no {backup}) although epochs were saved; the run "
                              f"cannot continue. Start a new run, or one from the last saved epoch with --weights "
                              f"{saved[0]} (the optimizer starts afresh)")
        raise ResumeError(f"{run_dir}: nothing to resume, the run stopped before the backup of its first epoch "
                          f"was written (no {backup}); start a new run")
    for folder in (run_dir, run_dir / BACKUP_DIR):
        for stale in folder.glob(".*"):  # atomic writes a kill interrupted
            if stale.is_file():
                stale.unlink()


def finish_run(run_dir: Path, epochs: int, early_stopped: bool) -> None:
    """Mark the run finished (``finished.json``, atomically, after every other output) and remove its backup."""
    outcome = "early stopping" if early_stopped else "all epochs"
    atomic_write_text(run_dir / FINISHED_FILE, json.dumps({"epochs": epochs, "ended": outcome}) + "\n")
    shutil.rmtree(run_dir / BACKUP_DIR, ignore_errors=True)


@contextlib.contextmanager
def removed_if_no_epoch(setup: RunSetup, log: Callable[[str], None] = print):
    """Remove a new run's folder when the block fails or is interrupted before the first epoch was saved
    (its history exists from then on), so no folder holding only ``config.toml`` is left behind. A full
    disk or read-only filesystem met while writing the run is reported naming the run folder."""
    try:
        yield
    except BaseException as exc:
        failure = write_failure(exc, setup.run_dir)
        if not setup.resumed and not (setup.run_dir / HISTORY_FILE).exists():
            shutil.rmtree(setup.run_dir, ignore_errors=True)
            log(f"Removed {setup.run_dir}: the run stopped before its first epoch was saved")
            if isinstance(exc, KeyboardInterrupt):
                raise StoppedBeforeFirstEpoch("interrupted before the first epoch was saved; nothing to resume") from None
        if failure is None:
            raise
        raise failure from exc


def log_summary(history, run_dir: Path, model_file: str, started: float, log: Callable[[str], None] = print) -> None:
    """Last lines of a run: duration, run folder, and the best epoch's validation scores."""
    log(f"Done in {duration(time.perf_counter() - started)}, {len(history.records)} epochs. Run folder: {run_dir}")
    best = history.best_epoch()
    if best is not None:
        rec = history.records[best]
        log(f"Best epoch {best + 1}: val_loss {rec['val_loss']:.4f}, val final {rec['val_final_score']:.4f} "
            f"(kappa {rec['val_kappa']:.4f}, F1 {rec['val_f1']:.4f}, AUC {rec['val_auc']:.4f}) -> {run_dir / model_file}")


def run_training_cli(train: Callable[[TrainConfig], Path], argv, prog: str, description: str,
                     hidden: tuple[str, ...] = ()) -> int:
    """Parse flags and train through the shared runner (``odir_core.errors.run_cli``): user errors give one
    line and exit code 2, a diverged run or an unwritable run folder exit code 1, Ctrl-C 130. ``hidden``:
    options accepted but left out of ``--help`` (another framework's).

    Under torchrun every process parses the same flags and rank 0 alone prints what they lead to (their
    errors, ``--help``); an error in training is printed once as ``run_cli`` tells for a distributed run."""
    ranks = Ranks.from_env()
    with contextlib.ExitStack() as quiet:
        if not ranks.main:
            quiet.enter_context(contextlib.redirect_stdout(io.StringIO()))
            quiet.enter_context(contextlib.redirect_stderr(io.StringIO()))
        config = parse_args(argv, prog=prog, description=description, hidden=hidden, log=print)

    def run(config: TrainConfig) -> int:
        train(config)  # returns the run folder
        return 0

    return run_cli(run, config, rank=ranks.rank,
                   interrupted="Interrupted. Continue with --resume RUN_DIR (the run folder printed above).")
