"""Train the dual-eye ResNet50 in Keras: ``KERAS_BACKEND=torch python -m keras_odir.train [--config F] [flags]``.

Every option is a field of ``odir_core.config.TrainConfig`` (``--help``). A run writes one folder
``runs/<experiment>-<timestamp>/``: ``config.toml``, ``best.keras`` (lowest validation loss),
``last.keras``, ``train_results.xlsx`` (the study's columns), ``history.csv``, ``tensorboard/``
and, while it runs, ``backup/`` for ``--resume RUN_DIR``. With a frozen backbone and no
augmentation the backbone features are computed once and only the head is trained on them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import keras  # keras_odir/__init__ has chosen the backend

from keras_odir.callbacks import BACKUP_METADATA, EpochEvaluation, read_backup, training_callbacks
from keras_odir.data import EpochBatches, feature_batches, image_batches
from keras_odir.epoch_outputs import EpochOutputs
from keras_odir.initial_weights import load_initial_weights
from keras_odir.losses import WeightedBCEWithLogits
from keras_odir.lr_schedule import EpochSchedule
from keras_odir.model import build_dual_model
from keras_odir.optimizers import TorchSGD
from keras_odir.parts import dual_parts
from keras_odir.precision import dtype_policy
from keras_odir.weights import read_keras_model, read_torch_state, torch_to_keras_state
from odir_core.checkpoints import KERAS_SUFFIX, TORCH_SUFFIXES, backbone_state_dict, dual_state_dict, is_dual_state
from odir_core.config import TrainConfig
from odir_core.console import early_stopping_line
from odir_core.dataset import DualEyeDataset
from odir_core.history import History
from odir_core.model_spec import backbone_spec, check_architecture
from odir_core.run import (
    ResumeError,
    RunSetup,
    TrainingDiverged,
    diverged_message,
    finish_run,
    log_summary,
    removed_if_no_epoch,
    run_training_cli,
    setup_run,
)
from odir_core.schedules import make_schedule
from odir_core.tensorboard import ScalarWriter


def build_model(config: TrainConfig) -> keras.Model:
    """The dual model of ``config`` with its starting weights.

    ``weights``: ``none``; ``imagenet`` (torchvision checkpoint, backbone); a torchvision ``.pth``
    (backbone); a whole-model ``.pth`` (torch_odir's or the study's own), ``.keras`` or ``.weights.h5``.
    What the weights leave random (the head; the backbone too with ``none``) is drawn from ``config.seed``
    by ``odir_core.initial_weights``, the same numbers as torch_odir.train's.
    """
    build = dict(freeze_backbone=not config.fine_tune, image_size=config.input_size)
    if config.weights in ("none", "imagenet"):
        weights = None if config.weights == "none" else "imagenet"
        model = build_dual_model(config.backbone, config.head, weights=weights, **build)
        return load_initial_weights(model, config.backbone, config.seed, draw_backbone=weights is None)
    path = Path(config.weights)
    if not path.is_file():
        raise FileNotFoundError(f"--weights {path}: no such file (use imagenet, none or a model file)")
    model = build_dual_model(config.backbone, config.head, **build)
    if path.suffix in TORCH_SUFFIXES:
        state = dual_state_dict(read_torch_state(path))
        if not is_dual_state(state):  # a torchvision checkpoint of the backbone alone
            spec = backbone_spec(config.backbone)
            torch_to_keras_state(dual_parts(model).backbone, backbone_state_dict(state, spec), source=str(path))
            return load_initial_weights(model, config.backbone, config.seed, draw_backbone=False)
        check_architecture(state, config.backbone, config.head, f"--weights {path}")
        torch_to_keras_state(model, state, source=str(path))
    elif path.name.endswith(".weights.h5"):
        model.load_weights(path)
    elif path.suffix == KERAS_SUFFIX:
        model.set_weights(read_keras_model(path).get_weights())
    else:
        raise ValueError(f"--weights {path}: unknown file type; use .keras, .weights.h5 or .pth")
    return model


def _eval_batches(dataset: DualEyeDataset, config: TrainConfig) -> EpochBatches:
    return image_batches(dataset, config.batch_size, workers=config.workers)


def train(config: TrainConfig, log=print) -> Path:
    """Run one training; returns the run folder."""
    started = time.perf_counter()
    log(f"keras_odir.train: backend {keras.backend.backend()}, experiment {config.experiment}")
    setup: RunSetup = setup_run(config, BACKUP_METADATA, log)
    with removed_if_no_epoch(setup, log):
        _train(setup, started, log)
    return setup.run_dir


def _train(setup: RunSetup, started: float, log) -> None:
    config, run_dir = setup.config, setup.run_dir
    start_epoch = read_backup(run_dir)[0] if setup.resumed else 0
    history = History(run_dir)
    val_losses = [r["val_loss"] for r in history.load(start_epoch)] if start_epoch else []
    if start_epoch:
        log(f"Resuming after epoch {start_epoch}")
    if start_epoch >= config.epochs:
        raise ResumeError(f"{run_dir}: already trained {start_epoch} of {config.epochs} epochs; pass --epochs N to go on")

    keras.utils.set_random_seed(config.seed)
    with dtype_policy(config.precision):
        model = build_model(config)
    y_train, y_val = setup.y_train, setup.y_val
    common = dict(image_size=config.image_size, crop_size=config.crop_size, normalize=config.normalize,
                  seed=config.seed)
    train_plain = DualEyeDataset(setup.data_dir, setup.train_df, augment="none", train=False, **common)
    val_data = DualEyeDataset(setup.data_dir, setup.val_df, augment="none", train=False, **common)
    order = dict(seed=config.seed, shuffle=True, balanced=config.balanced_sampler,
                 start_epoch=start_epoch, epochs=config.epochs)

    if config.uses_feature_cache:
        log("Frozen backbone and no augmentation: computing backbone features once per image")
        parts = dual_parts(model)
        extractor = parts.feature_model(model)
        train_features = extractor.predict(_eval_batches(train_plain, config), verbose=1)
        val_features = extractor.predict(_eval_batches(val_data, config), verbose=1)
        trainable = parts.head
        train_batches = feature_batches(train_features, y_train, config.batch_size, **order)

        def predict_train():
            return trainable.predict(train_features, batch_size=config.batch_size, verbose=0)

        def predict_val():
            return trainable.predict(val_features, batch_size=config.batch_size, verbose=0)
    else:
        trainable = model
        inference = dual_parts(model).inference_model(model)
        train_aug = DualEyeDataset(setup.data_dir, setup.train_df, augment=config.augment, train=True, **common)
        train_batches = image_batches(train_aug, config.batch_size, workers=config.workers, **order)
        train_eval, val_eval = _eval_batches(train_plain, config), _eval_batches(val_data, config)

        def predict_train():
            return inference.predict(train_eval, verbose=0)

        def predict_val():
            return inference.predict(val_eval, verbose=0)

    epoch_outputs = EpochOutputs(train_batches.steps_per_epoch * config.batch_size)
    if config.train_metrics == "epoch":
        train_outputs = epoch_outputs.outputs
    else:
        def train_outputs():
            return y_train, predict_train()

    trainable.compile(
        optimizer=TorchSGD(learning_rate=config.lr, momentum=config.momentum, weight_decay=config.weight_decay),
        loss=WeightedBCEWithLogits(setup.pos_weight),
        metrics=[epoch_outputs] if config.train_metrics == "epoch" else None,
    )
    # Build the compiled loss on one batch now, so fit() does not draw a batch of its own for that.
    x0, y0 = train_batches[0]
    trainable.compute_loss(x0, y0, trainable(x0, training=False))

    schedule = make_schedule(config.scheduler, config.lr, **config.scheduler_params())
    evaluation = EpochEvaluation(train_outputs, predict_val, y_val, history,
                                 ScalarWriter(run_dir / "tensorboard"), log)
    callbacks = training_callbacks(run_dir=run_dir, model=model, evaluation=evaluation,
                                   schedule_callback=EpochSchedule(schedule), patience=config.patience,
                                   seed=config.seed, resumed_val_losses=val_losses, trained_on=setup.trained_on)
    trainable.fit(train_batches, epochs=config.epochs, initial_epoch=start_epoch,
                  steps_per_epoch=train_batches.steps_per_epoch, shuffle=False, callbacks=callbacks, verbose=1)
    if evaluation.stopped_on_nan is not None:
        raise TrainingDiverged(diverged_message(evaluation.stopped_on_nan, history.best_epoch(), "best.keras"))
    stopped = early_stopping_line(len(history.records), config.epochs, config.patience)
    if stopped:
        log(stopped)
    finish_run(run_dir, len(history.records), early_stopped=len(history.records) < config.epochs)
    log_summary(history, run_dir, "best.keras", started, log)


def main(argv=None) -> int:
    """Command-line entry point."""
    return run_training_cli(train, argv, prog="python -m keras_odir.train", hidden=("device",),
                            description="Train the dual-eye ResNet50 with Keras 3 on the backend KERAS_BACKEND "
                            "names (torch, jax or tensorflow; default torch).")


if __name__ == "__main__":
    sys.exit(main())
