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
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import keras  # keras_odir/__init__ has chosen the backend
import numpy as np

from keras_odir import data_parallel

from keras_odir.cli_backend import BACKEND
from keras_odir.callbacks import BACKUP_FILES, BACKUP_METADATA, EpochEvaluation, read_backup, training_callbacks
from keras_odir.devices import chosen_device, on_device
from keras_odir.data import EpochBatches, feature_batches, image_batches
from keras_odir.epoch_outputs import EpochOutputs
from keras_odir.initial_weights import load_initial_weights
from keras_odir.losses import training_loss
from keras_odir.lr_schedule import EpochSchedule, StepLearningRate, StepScheduleLog
from keras_odir.executor import planned
from keras_odir.model import build_dual_model
from keras_odir.optimizers import TorchAdamW, TorchSGD
from keras_odir.parts import dual_parts, is_dual_model
from keras_odir.precision import dtype_policy
from keras_odir.weights import (keras_to_numpy_state, read_keras_model, read_torch_state, torch_to_keras_state,
                                weight_table)
from odir_core.errors import on_every_rank
from odir_core.evaluation.cross_validation import cross_validate
from odir_core.model.checkpoints import KERAS_SUFFIX, TORCH_SUFFIXES, backbone_state_dict, dual_state_dict, is_dual_state
from odir_core.model.model_spec import check_architecture
from odir_core.training.collectives import gather_rows, on_main
from odir_core.training.config import TrainConfig
from odir_core.training.feature_cache import build_feature_cache
from odir_core.training.history import History
from odir_core.training.losses import numpy_loss
from odir_core.training.param_groups import param_groups
from odir_core.training.ranks import Ranks, check_batch_split, training_rows
from odir_core.training.run import (
    RunSetup,
    end_run,
    guarded_run,
    run_training_cli,
    setup_run,
)
from odir_core.training.run_datasets import run_datasets
from odir_core.training.tensorboard import ScalarWriter


def build_model(config: TrainConfig) -> keras.Model:
    """The dual model of ``config`` with its starting weights.

    ``weights``: ``none``; ``imagenet`` (torchvision checkpoint, backbone); a torchvision ``.pth``
    (backbone); a whole-model ``.pth`` (torch_odir's or the study's own), ``.keras`` or ``.weights.h5``; a
    backbone's ``.keras`` (``keras_odir.convert`` of a backbone file).
    What the weights leave random (the head; the backbone too with ``none``) is drawn from ``config.seed``
    by ``odir_core.model.initial_weights``, the same numbers as torch_odir.train's.
    """
    spec, head = config.backbone_spec, config.head_spec
    build = dict(freeze_backbone=not config.fine_tune, image_size=config.input_size)
    if config.weights in ("none", "imagenet"):
        weights = None if config.weights == "none" else "imagenet"
        model = build_dual_model(spec, head, weights=weights, **build)
        return load_initial_weights(model, spec, config.seed, draw_backbone=weights is None)
    path = Path(config.weights)
    if not path.is_file():
        raise FileNotFoundError(f"--weights {path}: no such file (use imagenet, none or a model file)")
    model = build_dual_model(spec, head, **build)
    if path.suffix in TORCH_SUFFIXES:
        state = dual_state_dict(read_torch_state(path))
        if not is_dual_state(state):  # a torchvision checkpoint of the backbone alone
            torch_to_keras_state(dual_parts(model).backbone, backbone_state_dict(state, spec), source=str(path))
            return load_initial_weights(model, spec, config.seed, draw_backbone=False)
        check_architecture(state, spec, head, f"--weights {path}")
        torch_to_keras_state(model, state, source=str(path))
    elif path.name.endswith(".weights.h5"):
        model.load_weights(path)
    elif path.suffix == KERAS_SUFFIX:
        saved = read_keras_model(path)
        if not is_dual_model(saved):  # a backbone alone (keras_odir.convert of a backbone's .pth)
            state = keras_to_numpy_state(saved)
            torch_to_keras_state(dual_parts(model).backbone, backbone_state_dict(state, spec), source=str(path))
            return load_initial_weights(model, spec, config.seed, draw_backbone=False)
        check_architecture(keras_to_numpy_state(saved), spec, head, f"--weights {path}")
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


@dataclass
class Loop:
    """What ``fit`` trains and what each epoch's evaluation predicts: ``trainable`` (the dual model, or its
    head on backbone features computed once), ``network`` (the model the evaluation predicts with), this
    rank's batches of the training epochs and of the two evaluation passes, and the metric that keeps the
    epoch's training-mode outputs."""

    trainable: keras.Model
    network: keras.Model
    train_batches: EpochBatches
    train_eval: EpochBatches
    val_eval: EpochBatches
    epoch_outputs: EpochOutputs
    ranks: Ranks

    def predict(self, batches: EpochBatches) -> np.ndarray:
        """``network``'s outputs for every row of ``batches``: this rank's slices, gathered in order."""
        return gather_rows(data_parallel.predict(self.network, batches), batches.sizes, self.ranks)

    def epoch_outputs_of_every_rank(self) -> tuple[np.ndarray, np.ndarray]:
        """(labels, logits) of the epoch's training batches, every rank's rows in order."""
        labels, logits = self.epoch_outputs.outputs()
        if data_parallel.one_program(self.ranks):  # jax over several processes: the metric saw every row
            return labels, logits
        sizes = self.train_batches.sizes
        return gather_rows(labels, sizes, self.ranks), gather_rows(logits, sizes, self.ranks)


def compile_modes(config: TrainConfig) -> tuple[bool, bool | str]:
    """What ``--compile`` does on this backend: (whether the executor's plan runs under ``torch.compile``: torch,
    Keras' ``jit_compile``: True on jax and tensorflow, else Keras' "auto")."""
    on_torch = keras.backend.backend() == "torch"
    return config.compile and on_torch, True if config.compile and not on_torch else "auto"


def build_loop(setup: RunSetup, model: keras.Model, start_epoch: int, ranks: Ranks, log) -> Loop:
    """The batches (over images, or over backbone features computed once) and the model ``fit`` trains."""
    config = setup.config
    data = run_datasets(setup)
    batch, workers = config.batch_size, config.workers
    compiled = compile_modes(config)[0]
    order = dict(seed=config.seed, shuffle=True, balanced=config.balanced_sampler,
                 start_epoch=start_epoch, epochs=config.epochs, ranks=ranks, training=True)
    if config.uses_feature_cache:
        parts = dual_parts(model)
        extractor = parts.feature_model(model)

        def extract(dataset, description):
            batches = image_batches(dataset, batch, workers=workers, ranks=ranks)
            return gather_rows(data_parallel.predict(extractor, batches, verbose=1 if ranks.main else 0),
                               batches.sizes, ranks)

        cache = build_feature_cache(extract, data.train_plain, data.val, log)
        trainable = network = planned(parts.head, compile=compiled)
        train_batches = feature_batches(cache.train, setup.y_train, batch, **order)
        train_eval = feature_batches(cache.train, setup.y_train, batch, ranks=ranks)
        val_eval = feature_batches(cache.val, setup.y_val, batch, ranks=ranks)
    else:
        trainable = planned(model, compile=compiled)
        network = planned(dual_parts(model).inference_model(model), compile=compiled)
        train_batches = image_batches(data.train, batch, workers=workers, **order)
        train_eval, val_eval = (image_batches(d, batch, workers=workers, ranks=ranks)
                                for d in (data.train_plain, data.val))
    outputs = EpochOutputs(train_batches.steps_per_epoch * batch)
    return Loop(trainable, network, train_batches, train_eval, val_eval, outputs, ranks)


def weight_groups(config: TrainConfig, model: keras.Model, variables) -> list[tuple]:
    """(variable, lr_scale, decays) of each of the trained ``variables`` of the dual ``model``, by the rules of
    ``odir_core.training.param_groups`` on its torch key (and torch shape: ConvNeXt's layer scales are (C, 1, 1))."""
    names = {id(variable): (key, kind) for key, (variable, kind) in weight_table(model).items()}
    shapes = {}
    for variable in variables:
        key, kind = names[id(variable)]
        shapes[key] = (variable, tuple(variable.shape) + ((1, 1) if kind == "channel" else ()))
    groups = param_groups([(key, shape) for key, (_, shape) in shapes.items()], config.backbone_spec,
                          config.layer_decay, exempt=config.optimizer == "adamw")
    return [(shapes[key][0], group.lr_scale, group.decay) for group in groups for key in group.keys]


def make_optimizer(config: TrainConfig, model: keras.Model, trained, steps_per_epoch: int):
    """TorchSGD or TorchAdamW over the ``trained`` variables of the dual ``model`` with the param groups of
    ``odir_core.training.param_groups``; its learning rate a per-step schedule with ``--schedule-step step``."""
    lr = config.lr
    if config.schedule_step == "step":
        lr = StepLearningRate(config.scheduler, config.lr,
                              {**config.scheduler_params(), "steps_per_epoch": steps_per_epoch})
    if config.optimizer == "adamw":
        optimizer = TorchAdamW(learning_rate=lr, beta_1=config.adamw_beta1, beta_2=config.adamw_beta2,
                               epsilon=config.adamw_eps, weight_decay=config.weight_decay)
    else:
        optimizer = TorchSGD(learning_rate=lr, momentum=config.momentum, weight_decay=config.weight_decay)
    optimizer.set_param_groups(weight_groups(config, model, trained))
    return optimizer


def compile_loop(loop: Loop, setup: RunSetup, model: keras.Model) -> None:
    """Compile ``loop.trainable`` with the config's optimizer (:func:`make_optimizer`; gradients averaged over the
    processes where there are several) and loss (``--loss``, class-weighted with ``--weighted-loss``); the
    epoch-outputs metric where the epoch's train metrics or loss need it."""
    config = setup.config
    optimizer = make_optimizer(config, model, loop.trainable.trainable_variables, loop.train_batches.steps_per_epoch)
    optimizer.reduce_gradients = data_parallel.gradient_reducer(loop.ranks)
    keep_outputs = config.train_metrics == "epoch" or loop.ranks.distributed
    loop.trainable.compile(optimizer=optimizer, loss=training_loss(config, setup.pos_weight),
                           metrics=[loop.epoch_outputs] if keep_outputs else None,
                           jit_compile=compile_modes(config)[1])
    # Build the compiled loss on one batch now, so fit() does not draw a batch of its own for that.
    x0, y0 = loop.train_batches[0][:2]
    loop.trainable.compute_loss(x0, y0, loop.trainable(x0, training=False))


def epoch_evaluation(setup: RunSetup, loop: Loop, history: History, log) -> EpochEvaluation:
    """The callback that scores each epoch: train metrics from the epoch's training-mode outputs (as the study)
    or a clean pass (``--train-metrics clean``), validation metrics from a pass over the validation split;
    the validation loss is the training loss without the class weights (``odir_core.training.losses``); under several
    processes the training loss is the mean over every rank's rows."""
    if setup.config.train_metrics == "epoch":
        train_outputs = loop.epoch_outputs_of_every_rank
    else:
        def train_outputs():
            return setup.y_train, loop.predict(loop.train_eval)
    train_loss = None
    if loop.ranks.distributed:  # every rank's rows, as one process's loss tracker would average them
        weighted = numpy_loss(setup.config, setup.pos_weight)

        def train_loss(logs):
            labels, logits = loop.epoch_outputs_of_every_rank()
            return weighted(logits, labels)
    writer = ScalarWriter(setup.run_dir / "tensorboard") if loop.ranks.main else None
    return EpochEvaluation(train_outputs, lambda: loop.predict(loop.val_eval), setup.y_val, history, writer, log,
                           train_loss, val_loss=numpy_loss(setup.config))


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
    loop = build_loop(setup, model, start_epoch, ranks, log)
    compile_loop(loop, setup, model)
    evaluation = epoch_evaluation(setup, loop, history, log)
    steps = loop.train_batches.steps_per_epoch
    schedule = config.schedule(steps)
    schedule_callback = StepScheduleLog(schedule, steps) if config.schedule_step == "step" else EpochSchedule(schedule)
    # the checkpoints save the dual model: the trained one itself (with its optimizer) where it is trained whole
    saved = model if config.uses_feature_cache else loop.trainable
    callbacks = training_callbacks(run_dir=run_dir, model=saved, evaluation=evaluation,
                                   schedule_callback=schedule_callback, patience=config.patience,
                                   seed=config.seed, resumed_val_losses=val_losses, trained_on=setup.trained_on,
                                   ranks=ranks)
    if setup.resumed and ranks.main:  # config.toml once the backup (the callback before) is restored
        callbacks.append(keras.callbacks.LambdaCallback(on_train_begin=lambda logs: setup.save_config()))
    loop.trainable.fit(loop.train_batches, epochs=config.epochs, initial_epoch=start_epoch,
                       steps_per_epoch=loop.train_batches.steps_per_epoch, shuffle=False, callbacks=callbacks,
                       verbose=1 if ranks.main else 0)
    end_run(setup, history, evaluation.stopped_on_nan, "best.keras", BACKUP_FILES, started, ranks, log)


def main(argv=None) -> int:
    """Command-line entry point."""
    return run_training_cli(train, argv, prog="python -m keras_odir.train", every_fold=partial(cross_validate, train, BACKEND),
                            description="Train the dual-eye classifier (ResNet50 by default) with Keras 3 on the "
                            "backend KERAS_BACKEND names (torch, jax or tensorflow; default torch).")


if __name__ == "__main__":
    sys.exit(main())
