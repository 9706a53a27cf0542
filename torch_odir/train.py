"""Train the dual-eye model in PyTorch: ``python -m torch_odir.train [--config F] [flags]``.

The same options, configs and run folder as ``keras_odir.train`` (``--help``): ``config.toml``,
``best.pth`` (lowest validation loss) and ``last.pth`` (each ``{"state_dict", "config", "epoch"}``),
``train_results.xlsx``, ``history.csv``, ``tensorboard/``, and ``backup/state.pth`` while it runs
(``--resume RUN_DIR``). torch's SGD or AdamW over the param groups of ``odir_core.training.param_groups``,
``BCEWithLogitsLoss(pos_weight)`` (or ``--loss focal|asl``, ``torch_odir.losses``), ``LinearLR``/``CyclicLR``/
``LambdaLR`` (warmup_cosine) stepped once per epoch or per step, a DataLoader following the shared epoch order;
``--precision bf16|fp16`` runs the forward pass under ``torch.autocast`` (fp16 with a ``GradScaler``), weights stay float32.
"""

from __future__ import annotations

import contextlib
import math
import pickle
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
import torch.distributed
from torch import nn
from tqdm import tqdm

from odir_core.atomic import atomic_path
from odir_core.errors import on_every_rank
from odir_core.evaluation.cross_validation import cross_validate
from odir_core.model import provenance
from odir_core.model.checkpoints import TORCH_SUFFIXES, backbone_state_dict, dual_state_dict, is_dual_state
from odir_core.model.model_spec import ArchitectureError, check_architecture
from odir_core.training.collectives import batch_sum, gather_batches, on_main, process_group
from odir_core.training.config import TrainConfig
from odir_core.training.console import epoch_line
from odir_core.training.early_stopping import early_stopping_state, should_stop
from odir_core.training.epoch_metrics import diverged, epoch_record
from odir_core.training.feature_cache import FeatureBatch, build_feature_cache
from odir_core.training.history import History
from odir_core.training.losses import numpy_loss
from odir_core.training.ranks import DistributedError, Ranks, check_batch_split, loss_share
from odir_core.training.run import (
    ResumeError,
    RunSetup,
    damaged_backup_message,
    end_run,
    guarded_run,
    run_training_cli,
    setup_run,
)
from odir_core.training.run_datasets import run_datasets
from odir_core.training.param_groups import param_groups
from odir_core.training.tensorboard import ScalarWriter
from torch_odir.cli_backend import BACKEND
from torch_odir.data import make_loader
from torch_odir.data_parallel import wrap
from torch_odir.devices import resolve_device
from torch_odir.initial_weights import load_initial_weights
from torch_odir.losses import training_loss
from torch_odir.model import DualNet, read_torch_state

BACKUP = Path("backup") / "state.pth"
BACKUP_FILES = (BACKUP.name,)
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def build_model(config: TrainConfig) -> DualNet:
    """The DualNet of ``config`` with its starting weights: ``none``, ``imagenet``, a torchvision
    backbone checkpoint, or a whole-model ``.pth`` (torch_odir's or the study's own). What the weights
    leave random (the head; the backbone too with ``none``) is drawn from ``config.seed`` by
    ``odir_core.model.initial_weights``, the same numbers as keras_odir.train's."""
    freeze, spec, head = not config.fine_tune, config.backbone_spec, config.head_spec
    if config.weights in ("none", "imagenet"):
        weights = None if config.weights == "none" else "imagenet"
        model = DualNet(spec, head, freeze_backbone=freeze, weights=weights)
        return load_initial_weights(model, model.spec, config.seed, draw_backbone=weights is None)
    path = Path(config.weights)
    if path.suffix not in TORCH_SUFFIXES:
        raise ValueError(f"--weights {path}: torch_odir starts from PyTorch files ({', '.join(TORCH_SUFFIXES)}); "
                         f"convert a Keras model first: python -m keras_odir.convert {path} {path.stem}.pth")
    state = dual_state_dict(read_torch_state(path))
    model = DualNet(spec, head, freeze_backbone=freeze)
    try:
        if is_dual_state(state):
            check_architecture(state, spec, head, f"--weights {path}")
            model.load_state_dict(state)
        else:  # a torchvision checkpoint of the backbone alone
            model.backbone.load_state_dict({k: torch.as_tensor(v) for k, v in backbone_state_dict(state, spec).items()})
            load_initial_weights(model, model.spec, config.seed, draw_backbone=False)
    except RuntimeError as error:  # load_state_dict lists every missing, unexpected and mis-shaped key
        first = str(error).splitlines()[1].strip() if len(str(error).splitlines()) > 1 else str(error)
        raise ArchitectureError(f"--weights {path} does not fit backbone {spec.name} with head {head.name} "
                                f"({first}); pass the --backbone and --head it was trained with") from None
    return model


def make_optimizer(config: TrainConfig, model: DualNet) -> torch.optim.Optimizer:
    """torch's SGD or AdamW over the trained weights of ``model``, one param group per learning-rate scale
    (``--layer-decay``) and, for adamw, weight decay or none (``odir_core.training.param_groups``)."""
    named = [(key, p) for key, p in model.named_parameters() if p.requires_grad]
    weights = dict(named)
    groups = [{"params": [weights[key] for key in group.keys], "lr": config.lr * group.lr_scale,
               "weight_decay": config.weight_decay if group.decay else 0.0}
              for group in param_groups([(key, tuple(p.shape)) for key, p in named], model.spec, config.layer_decay,
                                        exempt=config.optimizer == "adamw")]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, betas=(config.adamw_beta1, config.adamw_beta2),
                                 eps=config.adamw_eps, weight_decay=config.weight_decay)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def make_scheduler(config: TrainConfig, optimizer, steps_per_epoch: int):
    """torch's LinearLR / CyclicLR / LambdaLR of the config (stepped once per epoch, or per step with
    ``--schedule-step step``), or None."""
    schedule = config.schedule(steps_per_epoch)
    if schedule.torch_name is None:
        return None
    return getattr(torch.optim.lr_scheduler, schedule.torch_name)(optimizer, **schedule.torch_kwargs())


def autocast(device: torch.device, precision: str):
    """torch.autocast for ``--precision`` (bf16 / fp16 compute, float32 weights); a no-op for float32."""
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES.get(precision), enabled=precision in AUTOCAST_DTYPES)


@torch.no_grad()
def predict_logits(forward, loader, device, precision: str = "float32", ranks: Ranks = Ranks()) -> np.ndarray:
    """Logits of every batch of ``loader`` in order (inputs moved to ``device``), as float32; under several
    processes each rank predicts its slices and every rank gets all rows back in order."""
    out = []
    for *inputs, _ in loader:
        with autocast(device, precision):
            out.append(forward(*(x.to(device) for x in inputs)).float().cpu().numpy())
    return gather_batches(out, ranks)


def _save(path: Path, model: nn.Module, setup: RunSetup, epoch: int) -> None:
    record = {"state_dict": model.state_dict(), "config": setup.config.to_dict(), "epoch": epoch,
              provenance.TORCH_KEY: provenance.at_epoch(setup.trained_on, epoch)}
    with atomic_path(path) as tmp:
        torch.save(record, tmp)


def train(config: TrainConfig, log=print) -> Path:
    """Run one training; returns the run folder. Under torchrun every process trains its slice of each
    global batch (DDP) and rank 0 alone prints and writes the run folder."""
    started = time.perf_counter()
    ranks = Ranks.from_env()
    log = ranks.log(log)
    device = resolve_device(config.device, ranks)
    if config.sync_bn and ranks.distributed and device.type != "cuda":
        raise DistributedError("--sync-bn: torch's SyncBatchNorm runs on CUDA only; leave it out on the CPU "
                               "(each process then normalises its own slice of the batch)")
    with process_group(ranks, str(device), torch.distributed, torch.cuda.set_device):
        processes = f", {ranks.world} processes on {device.type}" if ranks.distributed else ""
        log(f"torch_odir.train: torch {torch.__version__}, experiment {config.experiment}{processes}")
        setup = on_main(lambda: setup_run(config, BACKUP, log, read_backup), ranks)
        with guarded_run(setup, log) if ranks.main else contextlib.nullcontext():
            _train(setup, started, device, ranks, log)
    return setup.run_dir


@dataclass
class Loop:
    """What one epoch of training and validation runs: ``forward`` (the model, or its head on cached
    features; DDP-wrapped under several processes) over this rank's loaders, with its optimizer, loss,
    fp16 loss scaler, device, precision and ranks; ``val_loss``: the validation loss in numpy (the training loss
    without the class weights); ``step_scheduler``: the learning-rate scheduler when it is stepped after each
    optimizer step (``--schedule-step step``; else None, and ``save_epoch`` steps it after each epoch)."""

    forward: nn.Module
    train_loader: object
    eval_train: object
    eval_val: object
    optimizer: torch.optim.Optimizer
    loss_fn: nn.Module
    scaler: torch.amp.GradScaler
    device: torch.device
    precision: str
    ranks: Ranks
    val_loss: Callable[[np.ndarray, np.ndarray], float]
    step_scheduler: object = None


def train_one_epoch(loop: Loop, epoch: int, desc: str) -> tuple[float, list, list, dict]:
    """One pass over the epoch's training batches: (mean loss over the global batches, this rank's labels
    and training-mode logits per batch, the first param group's settings of the last step: lr, momentum).
    Stops at the first non-finite loss (the mean is then not finite).

    Each rank's mean loss is weighted by its share of the global batch (``odir_core.training.ranks.loss_share``)
    so that DDP's gradient average is the gradient of the global batch's mean loss."""
    loop.forward.train()
    loop.train_loader.batch_sampler.set_epoch(epoch)
    total, seen = 0.0, 0
    labels, logits_seen = [], []
    bar = tqdm(loop.train_loader, desc=desc, leave=True, disable=not loop.ranks.main)
    for *inputs, y in bar:
        inputs = [x.to(loop.device) for x in inputs]
        y = y.to(loop.device)
        loop.optimizer.zero_grad()
        with autocast(loop.device, loop.precision):
            logits = loop.forward(*inputs)
        loss = loop.loss_fn(logits.float(), y)
        batch_total, rows = batch_sum(loss.item() * len(y), len(y), loop.ranks)
        if loop.ranks.distributed:
            loss = loss * loss_share(len(y), rows, loop.ranks.world)
        loop.scaler.scale(loss).backward()  # loss scaling for fp16; plain backward otherwise
        loop.scaler.step(loop.optimizer)
        loop.scaler.update()
        group = {key: loop.optimizer.param_groups[0].get(key) for key in ("lr", "momentum")}
        if loop.step_scheduler is not None:
            loop.step_scheduler.step()
        total += batch_total
        labels.append(y.cpu().numpy())
        logits_seen.append(logits.detach().float().cpu().numpy())
        seen += rows
        bar.set_postfix(loss=f"{total / seen:.4f}")
        if not math.isfinite(batch_total):
            break
    return total / seen, labels, logits_seen, group


def validate(loop: Loop, trained: tuple[float, list, list], y_train: np.ndarray, y_val: np.ndarray,
             train_metrics: str) -> dict[str, float]:
    """The epoch's record (``odir_core.training.epoch_metrics``) from the outputs of ``train_one_epoch``: train metrics
    from the epoch's training-mode outputs (as the study) or a clean pass, validation metrics from a pass over
    the validation split; every rank predicts its slices and gets the same record."""
    loss, y_epoch, epoch_logits, group = trained
    loop.forward.eval()

    def predict(loader):
        return predict_logits(loop.forward, loader, loop.device, loop.precision, loop.ranks)

    def outputs():
        if train_metrics == "epoch":
            y, train_logits = gather_batches(y_epoch, loop.ranks), gather_batches(epoch_logits, loop.ranks)
        else:
            y, train_logits = y_train, predict(loop.eval_train)
        return y, train_logits, predict(loop.eval_val)

    return epoch_record(loss, outputs, y_val, group["lr"], group["momentum"], loop.val_loss)


def save_epoch(setup: RunSetup, model: DualNet, loop: Loop, scheduler, history: History, epoch: int) -> None:
    """After a finite epoch: best.pth when it has the lowest validation loss, last.pth, then (after the
    schedule's step) the backup ``--resume`` continues from, each written atomically by rank 0 alone."""
    run_dir, write = setup.run_dir, loop.ranks.main
    if write and history.best_epoch() == epoch:
        _save(run_dir / "best.pth", model, setup, epoch)
    if write:
        _save(run_dir / "last.pth", model, setup, epoch)
    if scheduler is not None and loop.step_scheduler is None:
        scheduler.step()
    if not write:
        return
    backup = run_dir / BACKUP
    backup.parent.mkdir(exist_ok=True)
    with atomic_path(backup) as tmp:  # tensors, numbers, strings, lists and dicts only: weights_only reads it
        torch.save({"model": model.state_dict(), "optimizer": loop.optimizer.state_dict(),
                    "scaler": loop.scaler.state_dict(),
                    "scheduler": None if scheduler is None else scheduler.state_dict(),
                    "rng": torch.get_rng_state(), "epoch": epoch + 1}, tmp)


def read_backup(run_dir: Path) -> tuple[int, dict]:
    """(epochs done, state) of the run's backup, read without executing anything from the file
    (``weights_only``: tensors and plain containers); a damaged or crafted file is one line."""
    backup = run_dir / BACKUP
    try:
        state = torch.load(backup, map_location="cpu", weights_only=True)
        return int(state["epoch"]), state
    except pickle.UnpicklingError:  # weights_only met a Python object it will not build
        reason = "it holds Python objects besides tensors and numbers; refused, since loading them could run code"
        raise ResumeError(damaged_backup_message(backup, reason, run_dir, "last.pth")) from None
    except Exception as error:  # torch.load raises zip and runtime errors alike for a damaged file
        reason = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        raise ResumeError(damaged_backup_message(backup, reason, run_dir, "last.pth")) from None


def _restore(setup: RunSetup, model: DualNet, loop: Loop, scheduler) -> int:
    """Load the run's backup (read by ``setup_run`` on rank 0, sent to the others with the setup) into the
    model, optimizer, scaler and scheduler; the epochs it holds."""
    state = setup.backup[1]
    with on_every_rank():  # every rank loads the same backup
        try:
            model.load_state_dict(state["model"])
            loop.optimizer.load_state_dict(state["optimizer"])
            loop.scaler.load_state_dict(state["scaler"])
            if scheduler is not None:
                scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng"])
            return int(state["epoch"])
        except Exception as error:  # a backup of another model or of a damaged pickle
            reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            raise ResumeError(damaged_backup_message(setup.run_dir / BACKUP, reason, setup.run_dir,
                                                     "last.pth")) from None


def build_loop(setup: RunSetup, model: DualNet, device: torch.device, ranks: Ranks, log) -> Loop:
    """The loaders (over images, or over backbone features computed once), optimizer and loss of the run."""
    config = setup.config
    check_batch_split(len(setup.train_df), config.batch_size, ranks.world)
    data = run_datasets(setup)
    batch, workers = config.batch_size, config.workers
    order = dict(seed=config.seed, shuffle=True, balanced=config.balanced_sampler, ranks=ranks, training=True)
    if config.uses_feature_cache:
        model.eval()

        def extract(dataset, description):
            loader = make_loader(dataset, batch, workers=workers, ranks=ranks)
            bar = tqdm(loader, desc=description, disable=not ranks.main)
            return predict_logits(model.features, bar, device, config.precision, ranks)

        cache = build_feature_cache(extract, data.train_plain, data.val, log)
        train_features = FeatureBatch(cache.train, setup.y_train.astype(np.float32))
        forward = model.head
        train_loader = make_loader(train_features, batch, **order)
        eval_train = make_loader(train_features, batch, ranks=ranks)
        eval_val = make_loader(FeatureBatch(cache.val, setup.y_val.astype(np.float32)), batch, ranks=ranks)
    else:
        forward = model
        train_loader = make_loader(data.train, batch, workers=workers, **order)
        eval_train = make_loader(data.train_plain, batch, workers=workers, ranks=ranks)
        eval_val = make_loader(data.val, batch, workers=workers, ranks=ranks)
    optimizer = make_optimizer(config, model)
    pos_weight = None if setup.pos_weight is None else torch.from_numpy(setup.pos_weight).to(device)
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
    forward = wrap(forward, ranks, device, config.sync_bn)
    if config.compile:
        forward = torch.compile(forward)  # the checkpoints keep saving ``model`` itself (its own keys)
    return Loop(forward, train_loader, eval_train, eval_val, optimizer,
                training_loss(config, pos_weight), scaler, device, config.precision, ranks, numpy_loss(config))


def _train(setup: RunSetup, started: float, device: torch.device, ranks: Ranks, log) -> None:
    config, run_dir = setup.config, setup.run_dir
    torch.manual_seed(config.seed)
    with on_every_rank():  # every rank reads the same --weights
        model = build_model(config).to(device)
    loop = build_loop(setup, model, device, ranks, log)
    scheduler = make_scheduler(config, loop.optimizer, len(loop.train_loader))
    if config.schedule_step == "step":
        loop.step_scheduler = scheduler
    history = History(run_dir, files=ranks.main)
    start_epoch = 0
    if setup.resumed:
        start_epoch = _restore(setup, model, loop, scheduler)
        if ranks.main:
            setup.save_config()
        history.records = on_main(lambda: history.load(start_epoch), ranks)
        log(f"Resuming after epoch {start_epoch}")
    writer = ScalarWriter(run_dir / "tensorboard") if ranks.main else None
    diverged_epoch = None
    for epoch in range(start_epoch, config.epochs):
        trained = train_one_epoch(loop, epoch, f"Epoch {epoch + 1}/{config.epochs}")
        record = validate(loop, trained, setup.y_train, setup.y_val, config.train_metrics)
        history.append(record)
        if writer is not None:
            writer.log_epoch(epoch + 1, record)
        log(epoch_line(epoch + 1, config.epochs, record))
        if diverged(record):  # nothing of this epoch is saved
            diverged_epoch = epoch
            break
        save_epoch(setup, model, loop, scheduler, history, epoch)
        _, wait, _ = early_stopping_state([r["val_loss"] for r in history.records])
        if should_stop(wait, config.patience):
            break
    if writer is not None:
        writer.close()
    end_run(setup, history, diverged_epoch, "best.pth", BACKUP_FILES, started, ranks, log)


def main(argv=None) -> int:
    """Command-line entry point."""
    return run_training_cli(train, argv, prog="python -m torch_odir.train", every_fold=partial(cross_validate, train, BACKEND),
                            description="Train the dual-eye classifier (ResNet50 by default) with PyTorch, the "
                            "reference implementation (the same options, configs and run folder as keras_odir.train).")


if __name__ == "__main__":
    sys.exit(main())
