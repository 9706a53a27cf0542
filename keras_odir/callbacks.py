"""Keras callbacks of a training run: epoch evaluation (metrics, history, TensorBoard, NaN stop),
checkpoints of the dual model, and early-stopping/checkpoint state restored on resume."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import keras
import numpy as np

from odir_core.atomic import atomic_path
from odir_core.history import STUDY_COLUMNS, History, bce_with_logits, early_stopping_state, split_metrics
from odir_core.tensorboard import ScalarWriter

LOGGED = frozenset(STUDY_COLUMNS) - {"train_loss"}  # Keras logs the training loss as "loss"


class EpochEvaluation(keras.callbacks.Callback):
    """After each epoch: take the epoch's training outputs, predict the validation split, compute
    the unweighted validation loss and the study's and challenge's metrics on both, put them in
    the epoch logs (``val_loss`` for early stopping and the best checkpoint), append them to the
    run's history files and TensorBoard.

    A non-finite training loss (``TerminateOnNaN`` stops mid-epoch) or validation logits stop the
    run (``stopped_on_nan``); the checkpoints skip non-finite weights, so earlier ones are kept.
    ``train_outputs``: returns ``(labels, logits)`` of the training split for this epoch (the
    epoch's training-mode outputs, or a clean inference pass); ``predict_val``: the validation
    logits (n, 8) for the current weights.
    """

    def __init__(
        self,
        train_outputs: Callable[[], tuple[np.ndarray, np.ndarray]],
        predict_val: Callable[[], np.ndarray],
        y_val: np.ndarray,
        history: History,
        writer: ScalarWriter,
        log: Callable[[str], None] = print,
    ):
        super().__init__()
        self.train_outputs = train_outputs
        self.predict_val = predict_val
        self.y_val = y_val
        self.history = history
        self.writer = writer
        self.log = log
        self.stopped_on_nan: int | None = None

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        train_loss = float(logs.get("loss", math.nan))
        record = {"train_loss": train_loss}
        finite = math.isfinite(train_loss)
        if finite:
            y_train, train_logits = self.train_outputs()
            val_logits = self.predict_val()
            finite = bool(np.isfinite(train_logits).all() and np.isfinite(val_logits).all())
        if finite:
            record.update(split_metrics("train", y_train, train_logits))
            record["val_loss"] = bce_with_logits(val_logits, self.y_val)
            record.update(split_metrics("val", self.y_val, val_logits))
        else:
            record["val_loss"] = math.nan
            self.stopped_on_nan = epoch  # keras_odir.train raises TrainingDiverged after fit
            self.model.stop_training = True
        record["lr"] = logs.get("learning_rate")
        record["momentum"] = logs.get("momentum")
        # the progress bar shows the study's metrics; every value goes to the history files
        logs.update({k: v for k, v in record.items() if k in LOGGED})
        self.history.append(record)
        self.writer.log_epoch(epoch, record)

    def on_train_end(self, logs=None):
        self.writer.close()


class _AtomicSaver:
    """What ModelCheckpoint sees as its model: saves ``target`` to a temporary file, then renames."""

    def __init__(self, target: keras.Model):
        self.target = target

    def save(self, filepath, overwrite=True):
        if not all(np.isfinite(keras.ops.convert_to_numpy(w)).all() for w in self.target.weights):
            return  # a diverged epoch's weights are never written
        with atomic_path(filepath) as tmp:
            self.target.save(tmp, overwrite=True)


class DualModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """``ModelCheckpoint`` that saves ``target`` (the whole dual model, also when only its head is
    trained on cached features), atomically."""

    def __init__(self, target: keras.Model, filepath, **kwargs):
        super().__init__(str(filepath), **kwargs)
        self.target = target

    def set_model(self, model):
        super().set_model(_AtomicSaver(self.target))


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
        best, wait, best_epoch = early_stopping_state(self.val_losses, 0)
        if self.early_stopping is not None:
            self.early_stopping.best = best
            self.early_stopping.wait = wait
            self.early_stopping.best_epoch = best_epoch or 0
        if self.best_checkpoint is not None:
            self.best_checkpoint.best = best


def training_callbacks(
    *,
    run_dir: Path,
    model: keras.Model,
    evaluation: EpochEvaluation,
    schedule_callback: keras.callbacks.Callback,
    patience: int,
    seed: int,
    resumed_val_losses: list[float],
) -> list[keras.callbacks.Callback]:
    """The callbacks of a run, in the order they must run (evaluation before the checkpoints
    and early stopping that read its ``val_loss``; the backup for ``--resume`` last)."""
    backup = keras.callbacks.BackupAndRestore(str(run_dir / "backup"))
    best = DualModelCheckpoint(model, run_dir / "best.keras", monitor="val_loss", mode="min", save_best_only=True)
    last = DualModelCheckpoint(model, run_dir / "last.keras", save_best_only=False)
    callbacks = [schedule_callback, EpochSeeds(seed), keras.callbacks.TerminateOnNaN(), evaluation, best, last]
    early = None
    if patience > 0:
        early = keras.callbacks.EarlyStopping(monitor="val_loss", mode="min", patience=patience, verbose=1)
        callbacks.append(early)
    # the backup comes last: an epoch is in the history before the backup says it is done
    callbacks += [RestoreState(resumed_val_losses, early, best), backup]
    return callbacks
