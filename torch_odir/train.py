"""Train the dual-eye ResNet50 in PyTorch: ``python -m torch_odir.train [--config F] [flags]``.

The same options, configs and run folder as ``keras_odir.train`` (``--help``): ``config.toml``,
``best.pth`` (lowest validation loss) and ``last.pth`` (each ``{"state_dict", "config", "epoch"}``),
``train_results.xlsx``, ``history.csv``, ``tensorboard/``, and ``backup/state.pth`` while it runs
(``--resume RUN_DIR``). torch's SGD, ``BCEWithLogitsLoss(pos_weight)``, ``LinearLR``/``CyclicLR``
stepped once per epoch, a DataLoader following the shared epoch order; ``--precision bf16|fp16``
runs the forward pass under ``torch.autocast`` (fp16 with a ``GradScaler``), weights stay float32.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from odir_core import provenance
from odir_core.atomic import atomic_path
from odir_core.checkpoints import backbone_state_dict, dual_state_dict, is_dual_state
from odir_core.config import TrainConfig
from odir_core.console import early_stopping_line, epoch_line
from odir_core.dataset import DualEyeDataset, EpochOrder
from odir_core.history import History, bce_with_logits, early_stopping_state, should_stop, split_metrics
from odir_core.model_spec import ArchitectureError, check_architecture
from odir_core.run import (
    ResumeError,
    RunSetup,
    TrainingDiverged,
    damaged_backup_message,
    diverged_message,
    finish_run,
    log_summary,
    removed_if_no_epoch,
    run_training_cli,
    setup_run,
)
from odir_core.schedules import make_schedule
from odir_core.tensorboard import ScalarWriter
from torch_odir.data import make_loader
from torch_odir.initial_weights import load_initial_weights
from torch_odir.model import DualNet, read_torch_state

BACKUP = Path("backup") / "state.pth"
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``auto``: the first CUDA device when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_model(config: TrainConfig) -> DualNet:
    """The DualNet of ``config`` with its starting weights: ``none``, ``imagenet``, a torchvision
    backbone checkpoint, or a whole-model ``.pth`` (torch_odir's or the study's own). What the weights
    leave random (the head; the backbone too with ``none``) is drawn from ``config.seed`` by
    ``odir_core.initial_weights``, the same numbers as keras_odir.train's."""
    freeze = not config.fine_tune
    if config.weights in ("none", "imagenet"):
        weights = None if config.weights == "none" else "imagenet"
        model = DualNet(config.backbone, config.head, freeze_backbone=freeze, weights=weights)
        return load_initial_weights(model, config.seed, draw_backbone=weights is None)
    path = Path(config.weights)
    state = dual_state_dict(read_torch_state(path))
    model = DualNet(config.backbone, config.head, freeze_backbone=freeze)
    try:
        if is_dual_state(state):
            check_architecture(state, config.backbone, config.head, f"--weights {path}")
            model.load_state_dict(state)
        else:  # a torchvision checkpoint of the backbone alone
            model.backbone.load_state_dict(backbone_state_dict(state, config.backbone))
            load_initial_weights(model, config.seed, draw_backbone=False)
    except RuntimeError as error:  # load_state_dict lists every missing, unexpected and mis-shaped key
        first = str(error).splitlines()[1].strip() if len(str(error).splitlines()) > 1 else str(error)
        raise ArchitectureError(f"--weights {path} does not fit backbone {config.backbone} with head {config.head} "
                                f"({first}); pass the --backbone and --head it was trained with") from None
    return model


def make_scheduler(config: TrainConfig, optimizer):
    """torch's LinearLR / CyclicLR of the config (stepped once per epoch), or None."""
    schedule = make_schedule(config.scheduler, config.lr, **config.scheduler_params())
    if schedule.torch_name is None:
        return None
    return getattr(torch.optim.lr_scheduler, schedule.torch_name)(optimizer, **schedule.torch_kwargs())


def autocast(device: torch.device, precision: str):
    """torch.autocast for ``--precision`` (bf16 / fp16 compute, float32 weights); a no-op for float32."""
    return torch.autocast(device.type, dtype=AUTOCAST_DTYPES.get(precision), enabled=precision in AUTOCAST_DTYPES)


@torch.no_grad()
def predict_logits(forward, loader, device, precision: str = "float32") -> np.ndarray:
    """Logits of every batch of ``loader`` in order (inputs moved to ``device``), as float32."""
    out = []
    for *inputs, _ in loader:
        with autocast(device, precision):
            out.append(forward(*(x.to(device) for x in inputs)).float().cpu().numpy())
    return np.concatenate(out)


def _features(model: DualNet, loader, device, precision: str) -> torch.Tensor:
    return torch.from_numpy(predict_logits(model.features, loader, device, precision))


def _feature_loader(features: torch.Tensor, labels: np.ndarray, order: EpochOrder, batch_size: int):
    """Batches (features, labels) in the shared epoch order; ``set_epoch`` like the image loader."""

    class Loader:
        epoch = 0

        def set_epoch(self, epoch):
            self.epoch = epoch

        def __len__(self):
            return -(-len(labels) // batch_size)

        def __iter__(self):
            rows = order(self.epoch)
            for start in range(0, len(rows), batch_size):
                part = torch.from_numpy(rows[start:start + batch_size])
                yield features[part], torch.from_numpy(labels[part.numpy()])

    return Loader()


def _save(path: Path, model: nn.Module, setup: RunSetup, epoch: int) -> None:
    record = {"state_dict": model.state_dict(), "config": setup.config.to_dict(), "epoch": epoch,
              provenance.TORCH_KEY: provenance.at_epoch(setup.trained_on, epoch)}
    with atomic_path(path) as tmp:
        torch.save(record, tmp)


def train(config: TrainConfig, log=print) -> Path:
    """Run one training; returns the run folder."""
    started = time.perf_counter()
    log(f"torch_odir.train: torch {torch.__version__}, experiment {config.experiment}")
    setup = setup_run(config, BACKUP, log)
    with removed_if_no_epoch(setup, log):
        _train(setup, started, log)
    return setup.run_dir


def _train(setup: RunSetup, started: float, log) -> None:
    config, run_dir = setup.config, setup.run_dir
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    model = build_model(config).to(device)
    y_train, y_val = setup.y_train, setup.y_val
    common = dict(image_size=config.image_size, crop_size=config.crop_size, normalize=config.normalize,
                  seed=config.seed)
    train_plain = DualEyeDataset(setup.data_dir, setup.train_df, augment="none", train=False, **common)
    val_data = DualEyeDataset(setup.data_dir, setup.val_df, augment="none", train=False, **common)
    plain_loader = make_loader(train_plain, config.batch_size, workers=config.workers)
    val_loader = make_loader(val_data, config.batch_size, workers=config.workers)

    if config.uses_feature_cache:
        log("Frozen backbone and no augmentation: computing backbone features once per image")
        model.eval()
        train_features = _features(model, tqdm(plain_loader, desc="features train"), device, config.precision)
        val_features = _features(model, tqdm(val_loader, desc="features val"), device, config.precision)
        order = EpochOrder(len(y_train), config.seed, labels=y_train if config.balanced_sampler else None)
        train_loader = _feature_loader(train_features, y_train, order, config.batch_size)
        forward = model.head
        eval_train = _feature_loader(train_features, y_train, EpochOrder(len(y_train), shuffle=False),
                                     config.batch_size)
        eval_val = _feature_loader(val_features, y_val, EpochOrder(len(y_val), shuffle=False), config.batch_size)
    else:
        train_aug = DualEyeDataset(setup.data_dir, setup.train_df, augment=config.augment, train=True, **common)
        train_loader = make_loader(train_aug, config.batch_size, seed=config.seed, shuffle=True,
                                   balanced=config.balanced_sampler, workers=config.workers)
        forward = model
        eval_train, eval_val = plain_loader, val_loader

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    scheduler = make_scheduler(config, optimizer)
    pos_weight = None if setup.pos_weight is None else torch.from_numpy(setup.pos_weight).to(device)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")

    history = History(run_dir)
    start_epoch = 0
    backup = run_dir / BACKUP
    if setup.resumed:
        try:
            state = torch.load(backup, map_location=device, weights_only=False)
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scaler.load_state_dict(state["scaler"])
            if scheduler is not None:
                scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng"])
            start_epoch = int(state["epoch"])
        except Exception as error:  # torch.load raises unpickling, zip and runtime errors alike for a damaged file
            reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
            raise ResumeError(damaged_backup_message(backup, reason, run_dir, "last.pth")) from None
        history.load(start_epoch)
        log(f"Resuming after epoch {start_epoch}")
    writer = ScalarWriter(run_dir / "tensorboard")
    diverged = None

    for epoch in range(start_epoch, config.epochs):
        model.train()
        getattr(train_loader, "batch_sampler", train_loader).set_epoch(epoch)
        lr = optimizer.param_groups[0]["lr"]
        momentum = optimizer.param_groups[0].get("momentum")
        total, seen = 0.0, 0
        epoch_labels, epoch_logits = [], []
        bar = tqdm(train_loader, desc=f"Epoch {epoch + 1}/{config.epochs}", leave=True)
        for *inputs, y in bar:
            inputs = [x.to(device) for x in inputs]
            y = y.to(device)
            optimizer.zero_grad()
            with autocast(device, config.precision):
                logits = forward(*inputs)
            loss = loss_fn(logits.float(), y)
            scaler.scale(loss).backward()  # loss scaling for fp16; plain backward otherwise
            scaler.step(optimizer)
            scaler.update()
            total += loss.item() * len(y)
            epoch_labels.append(y.cpu())
            epoch_logits.append(logits.detach().float().cpu())
            seen += len(y)
            bar.set_postfix(loss=f"{total / seen:.4f}")
            if not math.isfinite(loss.item()):
                break
        record = {"train_loss": total / seen}
        model.eval()
        finite = math.isfinite(record["train_loss"])
        if finite:
            if config.train_metrics == "epoch":  # the epoch's training-mode outputs, as the study
                y_epoch, train_logits = torch.cat(epoch_labels).numpy(), torch.cat(epoch_logits).numpy()
            else:
                y_epoch, train_logits = y_train, predict_logits(forward, eval_train, device, config.precision)
            val_logits = predict_logits(forward, eval_val, device, config.precision)
            finite = bool(np.isfinite(train_logits).all() and np.isfinite(val_logits).all())
        if finite:
            record.update(split_metrics("train", y_epoch, train_logits))
            record["val_loss"] = bce_with_logits(val_logits, y_val)
            record.update(split_metrics("val", y_val, val_logits))
        else:
            record["val_loss"] = math.nan
        record.update(lr=lr, momentum=momentum)
        history.append(record)
        writer.log_epoch(epoch + 1, record)
        log(epoch_line(epoch + 1, config.epochs, record))
        if not finite:  # nothing of this epoch is saved
            diverged = epoch
            break
        if history.best_epoch() == epoch:
            _save(run_dir / "best.pth", model, setup, epoch)
        _save(run_dir / "last.pth", model, setup, epoch)
        if scheduler is not None:
            scheduler.step()
        backup.parent.mkdir(exist_ok=True)
        with atomic_path(backup) as tmp:
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scaler": scaler.state_dict(),
                        "scheduler": None if scheduler is None else scheduler.state_dict(),
                        "rng": torch.get_rng_state(), "epoch": epoch + 1}, tmp)
        _, wait, _ = early_stopping_state([r["val_loss"] for r in history.records], config.patience)
        if should_stop(wait, config.patience):
            break
    writer.close()
    if diverged is not None:
        raise TrainingDiverged(diverged_message(diverged, history.best_epoch(), "best.pth"))
    stopped = early_stopping_line(len(history.records), config.epochs, config.patience)
    if stopped:
        log(stopped)
    finish_run(run_dir, len(history.records), early_stopped=len(history.records) < config.epochs)
    log_summary(history, run_dir, "best.pth", started, log)


def main(argv=None) -> int:
    """Command-line entry point."""
    return run_training_cli(train, argv, prog="python -m torch_odir.train",
                            description="Train the dual-eye ResNet50 with PyTorch, the reference implementation "
                            "(the same options, configs and run folder as keras_odir.train).")


if __name__ == "__main__":
    sys.exit(main())
