"""Framework-free orchestration of a training run, shared by ``keras_odir.train`` and ``torch_odir.train``.

``setup_run(config)`` resolves the data source, reads the annotations, splits them, computes
``pos_weight``, creates (or reopens, for ``--resume``) the run folder and writes ``config.toml``.

A run folder's life: the lock (``run.lock``, ``odir_core.training.run_lock``: one process per run folder) and
``config.toml`` first; per finished epoch the history, the checkpoints and then the backup (``backup/``, the
trainer's own format, each file replaced atomically); at the end ``finished.json``, written last, then the
backup's files are removed and the lock released. So ``--resume`` can tell a finished run (``finished.json``),
a run to continue (a backup) and one that stopped before its first epoch was saved (neither), and a new run
that fails or is interrupted before its first epoch was saved removes what it wrote.

``--resume`` writes nothing into the run folder (but its lock) before every check has passed: the folder is a
run, not finished, not in use, its settings are not changed by flags that would change the network or the data
(:data:`RESUME_MAY_CHANGE` may), and its backup reads back. Only files the project names are ever removed:
its own temporaries (``odir_core.atomic``), the backup's files, and the files of a new run that stopped before
its first epoch; a file a user put into a run folder stays.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from odir_core.atomic import atomic_write_text, remove_stale_temporaries
from odir_core.cli_config import ConfigError
from odir_core.data.annotations import label_matrix, read_annotations
from odir_core.data.folds import FOLDS_FILE, fold_assignment, fold_frames, save_folds
from odir_core.data.layouts import PREPARED, is_prepared
from odir_core.data.splits import check_training_split, split_frames
from odir_core.data.tfds import source as tfds_source
from odir_core.errors import EXIT_INTERRUPTED, InputError, OdirError, interrupt_exit_code, run_cli, write_failure, writing
from odir_core.labels import LABELS
from odir_core.metric_table import SCORES
from odir_core.model.provenance import training_record
from odir_core.training.class_weights import pos_weight_from_labels
from odir_core.training.config import FIELDS, PREPARED_ODIR, TrainConfig
from odir_core.training.config_files import load_config, save_config
from odir_core.training.config_flags import parse_args
from odir_core.training.console import duration, early_stopping_line
from odir_core.training.history import HISTORY_FILE
from odir_core.training.ranks import Ranks
from odir_core.training.run_lock import RunLock

CONFIG_FILE = "config.toml"
FINISHED_FILE = "finished.json"  # written last by a run that ended normally (all epochs or early stopping)
BACKUP_DIR = "backup"
TENSORBOARD_DIR = "tensorboard"
TENSORBOARD_FILES = "events.out.tfevents.*"  # what odir_core.training.tensorboard writes, one folder per series
# what a resumed run may change from the flags; anything else would change the network, the data or the run's
# numbers, so the flag is refused
RESUME_MAY_CHANGE = ("epochs", "patience", "workers", "device", "compile", "run_dir", "resume")


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
    """Ctrl-C or SIGTERM before a new run's first epoch was saved: its folder was removed, there is nothing
    to resume (exit code of the interruption: 130 or 143)."""

    def __init__(self, message: str, exit_code: int = EXIT_INTERRUPTED):
        super().__init__(message)
        self.exit_code = exit_code


def damaged_backup_message(backup: Path, reason: str, run_dir: Path, last_model: str) -> str:
    """One line for a backup that cannot be read, saying what can still be done."""
    return (f"{backup}: the backup is damaged ({reason}); the run cannot continue from it. Start a new run, or "
            f"one from the last saved epoch with --weights {run_dir / last_model} (the optimizer starts afresh)")


@dataclass
class RunSetup:
    """Everything a trainer needs besides the network: resolved config, folders, split, weights, and what
    its checkpoints record they were trained on (``odir_core.model.provenance``)."""

    config: TrainConfig
    run_dir: Path
    data_dir: Path
    train_df: pd.DataFrame
    val_df: pd.DataFrame
    pos_weight: np.ndarray | None
    resumed: bool
    trained_on: dict = field(default_factory=dict)
    lock: RunLock | None = None
    backup: tuple[int, Any] | None = None  # a resumed run's (epochs done, backup) from the trainer's reader

    def release(self) -> None:
        """Give up the run folder's lock (the end of the run; a no-op in a process that does not hold it)."""
        if self.lock is not None:
            self.lock.release()

    def save_config(self) -> None:
        """Write the resolved ``config.toml``: a resumed run's trainer calls this once its backup is restored,
        the last check of a resume (a new run's is written by ``setup_run``)."""
        save_config(self.config, self.run_dir / CONFIG_FILE)

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
        from odir_core.data.synthetic import demo_dataset

        path = Path(demo_dataset(patients=demo_patients))
        return path, f"synthetic demo set in {path}"
    path = Path(data)
    if not is_prepared(path):
        raise DataSourceError(
            f"--data {data}: not a prepared folder (needs {PREPARED.annotations} and {PREPARED.images}/); "
            f"create one with `python -m odir_core.prepare --source RAW --out {data}`, or pass --data synthetic"
        )
    return path, f"prepared folder {path}"


def split_patients(data_dir: Path, split: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, val) patients of a prepared folder or built TFDS dataset under ``split`` (``study`` or a split
    file)."""
    if tfds_source.is_tfds_source(data_dir):
        return tfds_source.split_frames(data_dir, split)
    df = read_annotations(data_dir / PREPARED.annotations)
    return split_frames(df, split, data_dir / PREPARED.annotations)


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


def setup_run(config: TrainConfig, backup: Path, log: Callable[[str], None] = print,
              read_backup: Callable[[Path], tuple[int, Any]] | None = None) -> RunSetup:
    """Resolve data and split, create and lock the run folder and write the resolved ``config.toml``; or lock
    and check the one to resume, whose trainer's backup file is ``backup`` relative to it, read by
    ``read_backup(run_dir)`` -> (epochs done, what the trainer restores), kept as ``RunSetup.backup`` (its
    ``config.toml`` is written by :meth:`RunSetup.save_config` once the trainer restored the backup). The lock
    is held until :meth:`RunSetup.release`."""
    data_dir, description = resolve_data(config.data, log, config.demo_patients)
    log(f"Data: {description}")
    train_df, val_df = split_patients(data_dir, config.split)
    log(f"Split {config.split}: {len(train_df)} training and {len(val_df)} validation patients")
    folds = None
    if config.folds:
        if config.fold == "all":
            raise ConfigError("fold = 'all' trains every fold in turn (odir_core.evaluation.cross_validation); "
                              "one run trains one fold: give --fold I")
        folds = (train_df, fold_assignment(train_df, config.folds, config.seed))
        train_df, val_df = fold_frames(*folds, int(config.fold))
        log(f"Fold {config.fold} of {config.folds} (over the split's training patients): {len(train_df)} training "
            f"and {len(val_df)} validation patients")
    check_training_split(len(train_df), len(val_df), config.split, data_dir)
    pos_weight = None
    if config.weighted_loss:
        pos_weight = np.asarray(pos_weight_from_labels(label_matrix(train_df)), dtype=np.float32)
        log("pos_weight (negatives/positives): " + ", ".join(f"{k} {w:.2f}" for k, w in zip(LABELS, pos_weight)))
    # an absolute data path, so that --resume and the run's config work from any folder
    data = str(data_dir) if tfds_source.is_tfds_source(str(data_dir)) else str(Path(data_dir).resolve())
    resolved = config.replace(data=data, resume="", run_dir=str(Path(config.run_dir)))
    resumed, state = bool(config.resume), None
    if resumed:
        run_dir = Path(config.resume)
        lock = _open_resumed(run_dir, backup, resolved)
    else:
        run_dir = new_run_dir(config.run_dir, config.experiment)
        lock = RunLock(run_dir).acquire()
    from odir_core.data.synthetic import is_synthetic

    trained_on = training_record(data, is_synthetic(data_dir), run_dir, config.experiment)
    setup = RunSetup(resolved, run_dir, data_dir, train_df, val_df, pos_weight, resumed, trained_on, lock)
    try:
        if resumed:
            setup.backup = None if read_backup is None else read_backup(run_dir)
            if setup.backup is not None and setup.backup[0] >= config.epochs:
                raise ResumeError(f"{run_dir}: already trained {setup.backup[0]} of {config.epochs} epochs; "
                                  "pass --epochs N to go on")
            for folder in (run_dir, run_dir / BACKUP_DIR):
                remove_stale_temporaries(folder)  # of atomic writes a kill interrupted
            log(f"Resuming run {run_dir}")
        else:
            log(f"Run folder: {run_dir}")
            setup.save_config()
            if folds is not None:
                save_folds(run_dir / FOLDS_FILE, *folds, config.folds, config.seed)
    except BaseException:
        lock.release()
        if not resumed:
            remove_new_run(run_dir)
        raise
    return setup


def _open_resumed(run_dir: Path, backup: Path, config: TrainConfig) -> RunLock:
    """Check that ``run_dir`` can be resumed with ``config`` and lock it; the lock, held."""
    if not (run_dir / CONFIG_FILE).is_file():
        raise ResumeError(f"--resume {run_dir}: not a run folder (no {CONFIG_FILE}); pass a folder under runs/")
    lock = RunLock(run_dir).acquire()
    try:
        check_resumable(run_dir, backup)
        check_unchanged(run_dir, config)
    except BaseException:
        lock.release()
        raise
    return lock


def _same_setting(name: str, ours, theirs) -> bool:
    if ours == theirs:
        return True
    return name == "data" and bool(ours) and bool(theirs) and Path(ours).resolve() == Path(theirs).resolve()


def check_unchanged(run_dir: Path, config: TrainConfig) -> None:
    """Refuse, naming the flag, a resume whose flags change a setting of the run other than
    :data:`RESUME_MAY_CHANGE` (the network, the data, the optimisation or the seed)."""
    try:
        saved = load_config(run_dir / CONFIG_FILE)
    except ConfigError as exc:
        raise ResumeError(f"--resume {run_dir}: its {CONFIG_FILE} cannot be read ({exc}); the run cannot "
                          "continue") from None
    for name in FIELDS:
        ours, theirs = getattr(config, name), getattr(saved, name)
        if name not in RESUME_MAY_CHANGE and not _same_setting(name, ours, theirs):
            allowed = ", ".join("--" + n.replace("_", "-") for n in RESUME_MAY_CHANGE[:5])
            raise ResumeError(f"--resume {run_dir}: --{name.replace('_', '-')} {ours} differs from the run's "
                              f"{theirs} ({CONFIG_FILE}); a resumed run keeps its settings (only {allowed} may "
                              "change): leave the flag out, or start a new run")


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


def _remove_files(folder: Path, patterns) -> None:
    """Remove the files of ``folder`` matching ``patterns`` and its temporaries, then the folder if that left
    it empty (a file someone else put there keeps it)."""
    if not folder.is_dir():
        return
    for pattern in patterns:
        for path in folder.glob(pattern):
            if path.is_file() and not path.is_symlink():
                path.unlink(missing_ok=True)
    remove_stale_temporaries(folder)
    with contextlib.suppress(OSError):
        folder.rmdir()


def finish_run(run_dir: Path, epochs: int, early_stopped: bool, backup_files: tuple[str, ...]) -> None:
    """Mark the run finished (``finished.json``, atomically, after every other output) and remove its backup:
    the trainer's ``backup_files`` (glob patterns) in ``backup/``, and the folder once empty."""
    outcome = "early stopping" if early_stopped else "all epochs"
    atomic_write_text(run_dir / FINISHED_FILE, json.dumps({"epochs": epochs, "ended": outcome}) + "\n")
    _remove_files(run_dir / BACKUP_DIR, backup_files)


def remove_new_run(run_dir: Path) -> bool:
    """Remove what a new run that stopped before its first epoch wrote (its config and folds, TensorBoard event
    files, temporaries), then its folders; whether the run folder is gone (a file someone else put there keeps it)."""
    board = run_dir / TENSORBOARD_DIR
    if board.is_dir() and not board.is_symlink():
        for series in board.iterdir():
            if series.is_dir() and not series.is_symlink():
                _remove_files(series, (TENSORBOARD_FILES,))
    _remove_files(board, ())
    _remove_files(run_dir, (CONFIG_FILE, FOLDS_FILE))
    return not run_dir.exists()


@contextlib.contextmanager
def guarded_run(setup: RunSetup, log: Callable[[str], None] = print):
    """Hold the run: release its lock at the end, however the block ends, and when the block fails or is
    interrupted (Ctrl-C, SIGTERM) before a new run's first epoch was saved (its history exists from then on),
    remove what it wrote, so no folder holding only ``config.toml`` is left behind. A full disk or read-only
    filesystem met while writing the run is reported naming the run folder."""
    try:
        yield
    except BaseException as exc:
        failure = write_failure(exc, setup.run_dir)
        if not setup.resumed and not (setup.run_dir / HISTORY_FILE).exists():
            setup.release()
            gone = remove_new_run(setup.run_dir)
            log(f"Removed {setup.run_dir}: the run stopped before its first epoch was saved" if gone else
                f"Removed the files of {setup.run_dir}: the run stopped before its first epoch was saved "
                "(the folder stays: it holds files the run did not write)")
            if isinstance(exc, KeyboardInterrupt):
                raise StoppedBeforeFirstEpoch("interrupted before the first epoch was saved; nothing to resume",
                                              interrupt_exit_code(exc)) from None
        if failure is None:
            raise
        raise failure from exc
    finally:
        setup.release()


def log_summary(history, run_dir: Path, model_file: str, started: float, log: Callable[[str], None] = print) -> None:
    """Last lines of a run: duration, run folder, and the best epoch's validation loss and study scores
    (odir_core.metric_table)."""
    log(f"Done in {duration(time.perf_counter() - started)}, {len(history.records)} epochs. Run folder: {run_dir}")
    best = history.best_epoch()
    if best is not None:
        rec = history.records[best]
        scores = {m.score: f"{m.label} {rec[m.column('val')]:.4f}" for m in SCORES if m.study}
        final = scores.pop("final")
        log(f"Best epoch {best + 1}: val_loss {rec['val_loss']:.4f}, val {final} ({', '.join(scores.values())}) "
            f"-> {run_dir / model_file}")


def end_run(setup: RunSetup, history, diverged_epoch: int | None, best_file: str, backup_files: tuple[str, ...],
            started: float, ranks: Ranks, log: Callable[[str], None] = print) -> None:
    """The end of a trainer's epochs: ``TrainingDiverged`` when the loss became NaN or infinite in
    ``diverged_epoch`` (0-based); else the early-stopping line, the run marked finished by rank 0
    (:func:`finish_run`, removing ``backup_files``) and :func:`log_summary` naming ``best_file``."""
    config, run_dir = setup.config, setup.run_dir
    if diverged_epoch is not None:
        raise TrainingDiverged(diverged_message(diverged_epoch, history.best_epoch(), best_file))
    stopped = early_stopping_line(len(history.records), config.epochs, config.patience)
    if stopped:
        log(stopped)
    if ranks.main:
        finish_run(run_dir, len(history.records), len(history.records) < config.epochs, backup_files)
    log_summary(history, run_dir, best_file, started, log)


def run_training_cli(train: Callable[[TrainConfig], Path], argv, prog: str, description: str,
                     every_fold: Callable[[TrainConfig], Path] | None = None) -> int:
    """Parse flags and train through the shared runner (``odir_core.errors.run_cli``): user errors give one
    line and exit code 2, a diverged run or an unwritable run folder exit code 1, Ctrl-C 130. ``--folds K
    --fold all`` goes to ``every_fold(config)`` (``odir_core.evaluation.cross_validation``).

    Under torchrun every process parses the same flags and rank 0 alone prints what they lead to (their
    errors, ``--help``); an error in training is printed once as ``run_cli`` tells for a distributed run."""
    ranks = Ranks.from_env()
    with contextlib.ExitStack() as quiet:
        if not ranks.main:
            quiet.enter_context(contextlib.redirect_stdout(io.StringIO()))
            quiet.enter_context(contextlib.redirect_stderr(io.StringIO()))
        config = parse_args(argv, prog=prog, description=description, log=print)

    def run(config: TrainConfig) -> int:
        if config.folds and config.fold == "all" and every_fold is not None:
            every_fold(config)  # returns the cross-validation folder
        else:
            train(config)  # returns the run folder
        return 0

    folder = "the cross-validation folder" if config.folds and config.fold == "all" else "the run folder"
    return run_cli(run, config, rank=ranks.rank,
                   interrupted=f"Interrupted. Continue with --resume RUN_DIR ({folder} printed above).")
