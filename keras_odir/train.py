"""Train the dual-eye model in Keras: ``KERAS_BACKEND=torch python -m keras_odir.train [--config F] [flags]``.

Every option is a field of ``odir_core.training.config.TrainConfig`` (``--help``). A run writes one folder
``runs/<experiment>-<timestamp>/``: ``config.toml``, ``best.keras`` (lowest validation loss),
``last.keras``, ``train_results.xlsx`` (the study's columns), ``history.csv``, ``tensorboard/``
and, while it runs, ``backup/`` for ``--resume RUN_DIR``. With a frozen backbone and no
augmentation the backbone features are computed once and only the head is trained on them.
"""

from __future__ import annotations

import contextlib
import sys
import time
from pathlib import Path

import keras  # keras_odir/__init__ has chosen the backend
import numpy as np

from keras_odir import data_parallel

from keras_odir.callbacks import BACKUP_FILES, BACKUP_METADATA, EpochEvaluation, read_backup, training_callbacks
from keras_odir.devices import chosen_device, on_device
from keras_odir.data import EpochBatches, feature_batches, image_batches
from keras_odir.epoch_outputs import EpochOutputs
from keras_odir.initial_weights import load_initial_weights
from keras_odir.losses import WeightedBCEWithLogits
from keras_odir.lr_schedule import EpochSchedule
from keras_odir.model import build_dual_model
from keras_odir.optimizers import TorchSGD
from keras_odir.parts import dual_parts
from keras_odir.precision import dtype_policy
from keras_odir.weights import keras_to_numpy_state, read_keras_model, read_torch_state, torch_to_keras_state
from odir_core.errors import on_every_rank
from odir_core.model.checkpoints import KERAS_SUFFIX, TORCH_SUFFIXES, backbone_state_dict, dual_state_dict, is_dual_state
from odir_core.model.model_spec import backbone_spec, check_architecture
from odir_core.training.collectives import gather_rows, on_main
from odir_core.training.config import TrainConfig
from odir_core.training.epoch_metrics import bce_with_logits
from odir_core.training.feature_cache import build_feature_cache
from odir_core.training.history import History
from odir_core.training.ranks import Ranks, check_batch_split, training_rows
from odir_core.training.run import (
    RunSetup,
    end_run,
    guarded_run,
    run_training_cli,
    setup_run,
)
from odir_core.training.run_datasets import run_datasets
from odir_core.training.schedules import make_schedule
from odir_core.training.tensorboard import ScalarWriter


def build_model(config: TrainConfig) -> keras.Model:
    """The dual model of ``config`` with its starting weights.

    ``weights``: ``none``; ``imagenet`` (torchvision checkpoint, backbone); a torchvision ``.pth``
    (backbone); a whole-model ``.pth`` (torch_odir's or the study's own), ``.keras`` or ``.weights.h5``.
    What the weights leave random (the head; the backbone too with ``none``) is drawn from ``config.seed``
    by ``odir_core.model.initial_weights``, the same numbers as torch_odir.train's.
    """
    spec = backbone_spec(config.backbone)
    build = dict(freeze_backbone=not config.fine_tune, image_size=config.input_size)
    if config.weights in ("none", "imagenet"):
        weights = None if config.weights == "none" else "imagenet"
        model = build_dual_model(config.backbone, config.head, weights=weights, **build)
        return load_initial_weights(model, spec, config.seed, draw_backbone=weights is None)
    path = Path(config.weights)
    if not path.is_file():
        raise FileNotFoundError(f"--weights {path}: no such file (use imagenet, none or a model file)")
    model = build_dual_model(config.backbone, config.head, **build)
    if path.suffix in TORCH_SUFFIXES:
        state = dual_state_dict(read_torch_state(path))
        if not is_dual_state(state):  # a torchvision checkpoint of the backbone alone
            torch_to_keras_state(dual_parts(model).backbone, backbone_state_dict(state, spec), source=str(path))
            return load_initial_weights(model, spec, config.seed, draw_backbone=False)
        check_architecture(state, config.backbone, config.head, f"--weights {path}")
        torch_to_keras_state(model, state, source=str(path))
    elif path.name.endswith(".weights.h5"):
        model.load_weights(path)
    elif path.suffix == KERAS_SUFFIX:
        saved = read_keras_model(path)
        check_architecture(keras_to_numpy_state(saved), config.backbone, config.head, f"--weights {path}")
        model.set_weights(saved.get_weights())
    else:
        raise ValueError(f"--weights {path}: unknown file type; use .keras, .weights.h5 or .pth")
    return model


def train(config: TrainConfig, log=print) -> Path:
    """Run one training; returns the run folder. Under torchrun (torch backend) every process trains its slice
    of each global batch, the gradients averaged over the processes before each step, and rank 0 alone
    prints and writes the run folder; on jax with several devices ``keras.distribution.DataParallel`` splits
    each global batch over them, over the devices of several processes too when the environment names a jax
    job (``keras_odir.data_parallel``)."""
    started = time.perf_counter()
    ranks = data_parallel.ranks()
    log = ranks.log(log)
    device = chosen_device(config.device, ranks.local_rank if ranks.distributed else None)
    with data_parallel.processes(ranks, config), on_device(device):
        log(f"keras_odir.train: backend {keras.backend.backend()}, experiment {config.experiment}"
            f"{data_parallel.describe(ranks)}")
        setup: RunSetup = on_main(lambda: setup_run(config, BACKUP_METADATA, log, read_backup), ranks)
        with guarded_run(setup, log) if ranks.main else contextlib.nullcontext():
            _train(setup, started, ranks, log)
    return setup.run_dir


def _train(setup: RunSetup, started: float, ranks: Ranks, log) -> None:
    config, run_dir = setup.config, setup.run_dir
    with on_every_rank():  # every rank reads the same backup, history and --weights
        start_epoch = setup.backup[0] if setup.resumed else 0
        history = History(run_dir, files=ranks.main)
        val_losses = [r["val_loss"] for r in history.load(start_epoch)] if start_epoch else []
        if start_epoch:
            log(f"Resuming after epoch {start_epoch}")
        check_batch_split(len(setup.train_df), config.batch_size, ranks.world)
        data_parallel.check_batches({"training": training_rows(len(setup.train_df), config.batch_size),
                                     "validation": len(setup.val_df)}, config.batch_size)

        keras.utils.set_random_seed(config.seed)
        with dtype_policy(config.precision):
            model = build_model(config)
    y_train, y_val = setup.y_train, setup.y_val
    data = run_datasets(setup)
    order = dict(seed=config.seed, shuffle=True, balanced=config.balanced_sampler,
                 start_epoch=start_epoch, epochs=config.epochs, ranks=ranks, training=True)

    def predict(network: keras.Model, batches: EpochBatches) -> np.ndarray:
        """``network``'s outputs for every row of ``batches``: this rank's slices, gathered in order."""
        return gather_rows(data_parallel.predict(network, batches), batches.sizes, ranks)

    if config.uses_feature_cache:
        parts = dual_parts(model)
        extractor = parts.feature_model(model)

        def extract(dataset, description):
            batches = image_batches(dataset, config.batch_size, workers=config.workers, ranks=ranks)
            return gather_rows(data_parallel.predict(extractor, batches, verbose=1 if ranks.main else 0),
                               batches.sizes, ranks)

        cache = build_feature_cache(extract, data.train_plain, data.val, log)
        trainable = parts.head
        train_batches = feature_batches(cache.train, y_train, config.batch_size, **order)
        train_eval = feature_batches(cache.train, y_train, config.batch_size, ranks=ranks)
        val_eval = feature_batches(cache.val, y_val, config.batch_size, ranks=ranks)
        network = trainable
    else:
        trainable = model
        network = dual_parts(model).inference_model(model)
        train_batches = image_batches(data.train, config.batch_size, workers=config.workers, **order)
        train_eval, val_eval = (image_batches(d, config.batch_size, workers=config.workers, ranks=ranks)
                                for d in (data.train_plain, data.val))

    epoch_outputs = EpochOutputs(train_batches.steps_per_epoch * config.batch_size)

    def gathered_outputs():
        labels, logits = epoch_outputs.outputs()
        if data_parallel.one_program(ranks):  # jax over several processes: the metric saw every row
            return labels, logits
        return gather_rows(labels, train_batches.sizes, ranks), gather_rows(logits, train_batches.sizes, ranks)

    if config.train_metrics == "epoch":
        train_outputs = gathered_outputs
    else:
        def train_outputs():
            return y_train, predict(network, train_eval)
    train_loss = None
    if ranks.distributed:  # every rank's rows, as one process's loss tracker would average them
        def train_loss(logs):
            labels, logits = gathered_outputs()
            return bce_with_logits(logits, labels, setup.pos_weight)

    optimizer = TorchSGD(learning_rate=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    optimizer.reduce_gradients = data_parallel.gradient_reducer(ranks)
    trainable.compile(optimizer=optimizer, loss=WeightedBCEWithLogits(setup.pos_weight),
                      metrics=[epoch_outputs] if config.train_metrics == "epoch" or ranks.distributed else None)
    # Build the compiled loss on one batch now, so fit() does not draw a batch of its own for that.
    x0, y0 = train_batches[0][:2]
    trainable.compute_loss(x0, y0, trainable(x0, training=False))

    schedule = make_schedule(config.scheduler, config.lr, **config.scheduler_params())
    evaluation = EpochEvaluation(train_outputs, lambda: predict(network, val_eval), y_val, history,
                                 ScalarWriter(run_dir / "tensorboard") if ranks.main else None, log, train_loss)
    callbacks = training_callbacks(run_dir=run_dir, model=model, evaluation=evaluation,
                                   schedule_callback=EpochSchedule(schedule), patience=config.patience,
                                   seed=config.seed, resumed_val_losses=val_losses, trained_on=setup.trained_on,
                                   ranks=ranks)
    if setup.resumed and ranks.main:  # config.toml once the backup (the callback before) is restored
        callbacks.append(keras.callbacks.LambdaCallback(on_train_begin=lambda logs: setup.save_config()))
    trainable.fit(train_batches, epochs=config.epochs, initial_epoch=start_epoch,
                  steps_per_epoch=train_batches.steps_per_epoch, shuffle=False, callbacks=callbacks,
                  verbose=1 if ranks.main else 0)
    end_run(setup, history, evaluation.stopped_on_nan, "best.keras", BACKUP_FILES, started, ranks, log)


def main(argv=None) -> int:
    """Command-line entry point."""
    return run_training_cli(train, argv, prog="python -m keras_odir.train",
                            description="Train the dual-eye classifier (ResNet50 by default) with Keras 3 on the "
                            "backend KERAS_BACKEND names (torch, jax or tensorflow; default torch).")


if __name__ == "__main__":
    sys.exit(main())
