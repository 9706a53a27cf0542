"""Keras callbacks of a training run: epoch evaluation (metrics, history, TensorBoard, NaN stop),
checkpoints of the dual model, a crash-safe backup for ``--resume``, and early-stopping/checkpoint
state restored on resume."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import h5py
import keras
import numpy as np

from keras_odir.data_parallel import one_program, this_process_only
from odir_core.atomic import atomic_path, atomic_write_text
from odir_core.model import provenance
from odir_core.training.collectives import all_true
from odir_core.training.console import epoch_line
from odir_core.training.early_stopping import early_stopping_state
from odir_core.training.epoch_metrics import diverged, epoch_record
from odir_core.training.history import History
from odir_core.training.losses import bce_with_logits
from odir_core.training.ranks import Ranks
from odir_core.training.run import BACKUP_DIR, ResumeError, damaged_backup_message
from odir_core.training.tensorboard import ScalarWriter

BACKUP_METADATA = Path(BACKUP_DIR) / "training_metadata.json"  # written last: names the epoch's weights file
BACKUP_FILES = (BACKUP_METADATA.name, "epoch-*.weights.h5")

# history keys Keras already logs under its own name: the training loss as "loss", the learning rate
# as "learning_rate" (EpochSchedule), the momentum as "momentum" (EpochSchedule, a cycling schedule)
NOT_LOGGED = frozenset({"train_loss", "lr", "momentum"})


def optimizer_momentum(model: keras.Model) -> float | None:
    """The momentum of ``model``'s optimizer (inside a loss-scaling wrapper too), or None if it has none."""
    optimizer = getattr(model.optimizer, "inner_optimizer", model.optimizer)
    momentum = getattr(optimizer, "momentum", None)
    return None if momentum is None else float(keras.ops.convert_to_numpy(momentum))


class LossProgbar(keras.callbacks.ProgbarLogger):
    """Keras' progress bar showing the training loss only; each epoch's metrics are one line of
    ``EpochEvaluation`` instead of a list that wraps. Place it before EpochEvaluation, so the bar
    is finished before that line is printed."""

    @staticmethod
    def _loss(logs):
        return {"loss": logs["loss"]} if logs and "loss" in logs else None

    def on_train_batch_end(self, batch, logs=None):
        super().on_train_batch_end(batch, self._loss(logs))

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, self._loss(logs))


class EpochEvaluation(keras.callbacks.Callback):
    """After each epoch: take the epoch's training outputs, predict the validation split, compute
    the validation loss (``val_loss(logits, targets)``: the training loss without the class weights, by default
    the unweighted BCE) and the study's and challenge's metrics on both, put them in
    the epoch logs (``val_loss`` for early stopping and the best checkpoint), append them to the
    run's history files and TensorBoard (step = epoch number from 1), and log the epoch's console
    line (``odir_core.training.console.epoch_line``, as torch_odir.train).

    A non-finite training loss (``TerminateOnNaN`` stops mid-epoch) or validation logits stop the
    run (``stopped_on_nan``); the checkpoints skip non-finite weights, so earlier ones are kept.
    ``train_outputs``: returns ``(labels, logits)`` of the training split for this epoch (the
    epoch's training-mode outputs, or a clean inference pass); ``predict_val``: the validation
    logits (n, 8) for the current weights; ``train_loss``: the epoch's training loss from the epoch logs
    (default Keras' ``loss``; under several processes the mean over every rank's rows); ``writer``: None on
    the ranks that write nothing.
    """

    def __init__(
        self,
        train_outputs: Callable[[], tuple[np.ndarray, np.ndarray]],
        predict_val: Callable[[], np.ndarray],
        y_val: np.ndarray,
        history: History,
        writer: ScalarWriter | None,
        log: Callable[[str], None] = print,
        train_loss: Callable[[dict], float] | None = None,
        val_loss: Callable[[np.ndarray, np.ndarray], float] = bce_with_logits,
    ):
        super().__init__()
        self.train_loss = train_loss or (lambda logs: logs.get("loss", math.nan))
        self.val_loss = val_loss
        self.train_outputs = train_outputs
        self.predict_val = predict_val
        self.y_val = y_val
        self.history = history
        self.writer = writer
        self.log = log
        self.stopped_on_nan: int | None = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        momentum = logs.get("momentum", optimizer_momentum(self.model))
        record = epoch_record(self.train_loss(logs), lambda: (*self.train_outputs(), self.predict_val()),
                              self.y_val, logs.get("learning_rate"), momentum, self.val_loss)
        if diverged(record):
            self.stopped_on_nan = epoch  # keras_odir.train raises TrainingDiverged after fit
            self.model.stop_training = True
        logs.update({k: v for k, v in record.items() if k not in NOT_LOGGED})
        self.history.append(record)
        if self.writer is not None:
            self.writer.log_epoch(epoch + 1, record)
        self.log(epoch_line(epoch + 1, self.params["epochs"], record))

    def on_train_end(self, logs=None):
        if self.writer is not None:
            self.writer.close()


def all_finite(model: keras.Model) -> bool:
    """Whether every weight of ``model`` is finite."""
    return all(np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in model.weights)


class _AtomicSaver:
    """What ModelCheckpoint sees as its model: saves ``target`` to a temporary file, adds what it was
    trained on at ``epoch`` (``odir_core.model.provenance``), then renames."""

    def __init__(self, target: keras.Model, trained_on: dict | None):
        self.target = target
        self.trained_on = trained_on
        self.epoch = 0

    def save(self, filepath, overwrite=True):
        if not all_finite(self.target):
            return  # a diverged epoch's weights are never written
        with atomic_path(filepath) as tmp, this_process_only():
            self.target.save(tmp, overwrite=True)
            if self.trained_on:
                provenance.write_keras(tmp, provenance.at_epoch(self.trained_on, self.epoch))


def without_training_state(model: keras.Model) -> keras.Model:
    """A model of the same layers and weights (shared, not copied) that was never compiled: saving it
    leaves out the optimizer state (as large as the trained weights when the whole network is trained)."""
    return keras.Model(model.input, model.output, name=model.name)


class DualModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """``ModelCheckpoint`` that saves ``target`` (the whole dual model, also when only its head is
    trained on cached features) atomically, recording ``trained_on``; with ``optimizer=False`` without
    the optimizer state (best.keras, for evaluate, predict and ``--weights``; last.keras keeps it)."""

    def __init__(self, target: keras.Model, filepath, trained_on: dict | None = None, optimizer: bool = True,
                 **kwargs):
        super().__init__(str(filepath), **kwargs)
        self.target = target if optimizer else without_training_state(target)
        self.trained_on = trained_on

    def set_model(self, model):
        super().set_model(_AtomicSaver(self.target, self.trained_on))

    def on_epoch_end(self, epoch, logs=None):
        self.model.epoch = epoch
        super().on_epoch_end(epoch, logs)


class EpochSeeds(keras.callbacks.Callback):
    """Re-seed the random generators (dropout) from (seed, epoch) before each epoch's first step, so a
    resumed run draws the same dropout masks as an uninterrupted one (Keras does not save
    generator states with the weights)."""

    def __init__(self, seed: int):
        super().__init__()
        self.seed = int(seed)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        # After the epoch's first batch is fetched: starting the data iterator draws from torch's
        # global generator in a fresh fit() only, which would shift a resumed run's dropout masks.
        if batch != 0:
            return
        epoch = self.epoch
        # unseeded Dropout draws from the backend's global generator (torch), seeded ones from their state
        keras.utils.set_random_seed(int(np.random.SeedSequence([self.seed, epoch]).generate_state(1)[0] % (2**31 - 1)))
        states = [v for v in self.model.variables if v.name == "seed_generator_state"]
        for k, state in enumerate(states):
            value = np.random.SeedSequence([self.seed, epoch, k]).generate_state(1)[0] % (2**31 - 1)
            state.assign(np.array([value, 0], dtype=state.dtype))


class RestoreState(keras.callbacks.Callback):
    """On resume, give EarlyStopping and the best checkpoint the state they had after the epochs
    already done (from the run's history). Place it after them and after BackupAndRestore."""

    def __init__(self, val_losses: list[float], early_stopping=None, best_checkpoint=None):
        super().__init__()
        self.val_losses = val_losses
        self.early_stopping = early_stopping
        self.best_checkpoint = best_checkpoint

    def on_train_begin(self, logs=None):
        if not self.val_losses:
            return
        best, wait, best_epoch = early_stopping_state(self.val_losses)
        if self.early_stopping is not None:
            self.early_stopping.best = best
            self.early_stopping.wait = wait
            self.early_stopping.best_epoch = best_epoch or 0
        if self.best_checkpoint is not None:
            self.best_checkpoint.best = best


def _read_every_array(weights: Path) -> None:
    """Read every array of an HDF5 file (h5py reads numbers only; nothing in the file is executed)."""
    with h5py.File(weights, "r") as h5:
        h5.visititems(lambda name, item: item[()] if isinstance(item, h5py.Dataset) else None)


def read_backup(run_dir: Path) -> tuple[int, Path]:
    """(epochs done, weights file) of the run's backup, checked down to every array; a damaged one raises
    ResumeError. The backup is JSON and HDF5 (read as numbers): no file of it can execute code.

    The run must have ``BACKUP_METADATA`` (``odir_core.training.run.check_resumable`` checks that first).
    """
    meta = run_dir / BACKUP_METADATA

    def damaged(reason: str) -> ResumeError:
        return ResumeError(damaged_backup_message(meta.parent, reason, run_dir, "last.keras"))

    try:
        record = json.loads(meta.read_text(encoding="utf-8"))
        epoch, weights = int(record["epoch"]), meta.parent / str(record["weights"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise damaged(f"{meta.name} unreadable: {exc}") from None
    if not weights.is_file():
        raise damaged(f"{weights.name} is missing")
    if weights.parent != meta.parent or not weights.name.endswith(".weights.h5"):
        raise damaged(f"{meta.name} names {record['weights']!r}, not a weights file of the backup folder")
    if not h5py.is_hdf5(weights):
        raise damaged(f"{weights.name} is not an HDF5 file")
    try:
        _read_every_array(weights)
    except Exception as exc:  # h5py raises OSError, KeyError, RuntimeError... for a damaged file
        raise damaged(f"{weights.name}: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}") from None
    return epoch, weights


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` whose backup survives a crash at any point, and is never of diverged weights.

    Keras writes ``latest.weights.h5`` and the metadata in place, so a kill mid-write leaves a backup that
    cannot be read. Here each epoch's weights go to a new ``epoch-NNNN.weights.h5`` (written under a
    temporary name, then renamed), and ``training_metadata.json``, which names that file, is replaced
    after it; the previous epoch's file is removed last. The backup stays after training:
    ``odir_core.training.run.finish_run`` removes it once the run is marked finished. ``write=False`` only restores
    (the ranks of a distributed run other than 0).
    """

    def __init__(self, backup_dir, write: bool = True):
        super().__init__(str(backup_dir), delete_checkpoint=False)
        self.write = write

    def on_train_begin(self, logs=None):
        self._load_model()  # no ``.bkp`` fallback: the metadata only ever names a complete file

    def _load_model(self):
        run_dir = Path(self.backup_dir).parent
        if not (run_dir / BACKUP_METADATA).is_file():
            return
        epoch, weights = read_backup(run_dir)
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        try:
            self.model.load_weights(weights)
        except Exception as exc:  # h5py/Keras raise several types for a file that is not this model's
            raise ResumeError(damaged_backup_message(weights.parent, f"{weights.name}: {exc}", run_dir,
                                                     "last.keras")) from None
        self.model._initial_epoch = epoch

    def _save_model(self):
        if not self.write or not all_finite(self.model):
            return
        folder = Path(self.backup_dir)
        weights = folder / f"epoch-{self._current_epoch:04d}.weights.h5"
        with atomic_path(weights) as tmp, this_process_only():
            self.model.save_weights(tmp, overwrite=True)
        record = {"epoch": self._current_epoch, "batch": self._last_batch_seen, "weights": weights.name}
        atomic_write_text(folder / BACKUP_METADATA.name, json.dumps(record) + "\n")
        for old in folder.glob("epoch-*.weights.h5"):
            if old != weights:
                old.unlink()


class StopTogetherOnNaN(keras.callbacks.Callback):
    """``TerminateOnNaN`` for a data-parallel run: every rank stops after the batch in which any rank's loss
    became NaN or infinite, so none waits for the others in the next gradient all-reduce."""

    def __init__(self, ranks: Ranks):
        super().__init__()
        self.ranks = ranks

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        finite = loss is None or math.isfinite(float(keras.ops.convert_to_numpy(loss)))
        if not all_true(finite, self.ranks):
            self.model.stop_training = True


def training_callbacks(
    *,
    run_dir: Path,
    model: keras.Model,
    evaluation: EpochEvaluation,
    schedule_callback: keras.callbacks.Callback,
    patience: int,
    seed: int,
    resumed_val_losses: list[float],
    trained_on: dict | None = None,
    ranks: Ranks = Ranks(),
) -> list[keras.callbacks.Callback]:
    """The callbacks of a run, in the order they must run (the progress bar finished before the
    evaluation's line; evaluation before the checkpoints and early stopping that read its
    ``val_loss``; the backup for ``--resume`` last). Under several processes only rank 0 shows the bar and
    writes checkpoints and backups; the others only restore the backup on ``--resume``."""
    backup = AtomicBackupAndRestore(run_dir / BACKUP_DIR, write=ranks.main)
    # one jax program over several processes has one loss, the same on every process
    together = ranks.distributed and not one_program(ranks)
    stop = StopTogetherOnNaN(ranks) if together else keras.callbacks.TerminateOnNaN()
    callbacks = [schedule_callback, EpochSeeds(seed), stop]
    best = None
    if ranks.main:
        # both record what they were trained on; best.keras without the optimizer state, last.keras with it
        best = DualModelCheckpoint(model, run_dir / "best.keras", trained_on, optimizer=False, monitor="val_loss",
                                   mode="min", save_best_only=True)
        last = DualModelCheckpoint(model, run_dir / "last.keras", trained_on, save_best_only=False)
        callbacks += [LossProgbar(), evaluation, best, last]
    else:
        callbacks.append(evaluation)
    early = None
    if patience > 0:  # its message is keras_odir.train's, the same as torch_odir.train's
        early = keras.callbacks.EarlyStopping(monitor="val_loss", mode="min", patience=patience, verbose=0)
        callbacks.append(early)
    # the backup comes last: an epoch is in the history before the backup says it is done
    callbacks += [RestoreState(resumed_val_losses, early, best), backup]
    return callbacks
