"""The training configuration shared by ``keras_odir.train`` and ``torch_odir.train``: its schema.

One dataclass, :class:`TrainConfig`, is the single source of every training option: its fields are the
TOML keys of ``experiments/*.toml`` (read and written by :mod:`odir_core.training.config_files`) and, with
``_`` written as ``-``, the command-line flags (:mod:`odir_core.training.config_flags`). Precedence: field
defaults < ``--config`` file < flags. Here: the fields, their help, the values each takes and the checks
that refuse anything else.
"""

from __future__ import annotations

import dataclasses
import math
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath
from typing import Any

from odir_core.cli_config import ConfigError
from odir_core.data.augment import MODES as AUGMENT_MODES
from odir_core.model import model_spec
from odir_core.model.model_spec import BACKBONES as BACKBONE_SPECS
from odir_core.model.model_spec import DEFAULT_BACKBONE, HEAD_HELP, BackboneSpec, HeadSpec
from odir_core.model.model_spec import HEADS as HEAD_SPECS
from odir_core.training import losses
from odir_core.training.losses import LOSSES
from odir_core.training.schedules import CYCLIC_MODES, SCHEDULE_STEPS, SCHEDULERS, Schedule, make_schedule

# Where an empty ``data`` looks for a prepared ODIR-5K (relative to the working folder).
PREPARED_ODIR = Path("data") / "odir5k"

HEADS = tuple(HEAD_SPECS)
BACKBONES = tuple(BACKBONE_SPECS)
PRECISIONS = ("float32", "bf16", "fp16")
TRAIN_METRICS = ("epoch", "clean")
OPTIMIZERS = ("sgd", "adamw")


@dataclass(frozen=True)
class Bounds:
    """The values a numeric field takes: finite, from ``low`` (excluded when ``low_open``) to ``high`` (excluded
    when ``high_open``), or exactly ``special`` when given (a value meaning "none"); ``whole``: an integer field."""

    low: float
    high: float = math.inf
    low_open: bool = False
    whole: bool = False
    high_open: bool = False
    special: float | None = None

    def allows(self, value: float) -> bool:
        """Whether ``value`` is within the bounds (NaN and infinities never are)."""
        if isinstance(value, float) and not math.isfinite(value):
            return False
        if self.special is not None and value == self.special:
            return True
        return ((self.low < value if self.low_open else self.low <= value)
                and (value < self.high if self.high_open else value <= self.high))

    def describe(self) -> str:
        """The bounds in words, e.g. ``a finite number > 0``, ``a number in (0, 1]``, ``a number in [0, 1] or
        -1``."""
        if self.whole:
            text = f"a whole number from {self.low} to {self.high}"
        elif self.high == math.inf:
            text = f"a finite number {'>' if self.low_open else '>='} {self.low:g}"
        else:
            opening, closing = "(" if self.low_open else "[", ")" if self.high_open else "]"
            text = f"a number in {opening}{self.low:g}, {self.high:g}{closing}"
        return text if self.special is None else f"{text} or {self.special:g}"


def _whole(low: int, high: int) -> Bounds:
    return Bounds(low, high, whole=True)


# Upper bounds of the whole-number fields: far above any real run, low enough that a mistyped value is refused
# before it fails deep inside a trainer. A batch of 2**16 patients at 224 px is 79 GB of float32 input alone,
# more than one accelerator holds (and more than ODIR-5K's 3500 patients); 4096 px is above the side of the
# prepared images (512 by default) and of what ResNet50 trains on in one accelerator's memory.
MAX_EPOCHS = 100_000
MAX_BATCH_SIZE = 2**16
MAX_IMAGE_SIZE = 4096
MAX_PATIENTS = 100_000
MAX_WORKERS = 256
MAX_FOLDS = 100  # cross-validation folds: far above the usual 3 to 10
MAX_SEED = 2**32 - 1  # numpy's (keras.utils.set_random_seed) upper bound; torch.manual_seed takes more

POSITIVE = Bounds(0.0, low_open=True)
FRACTION = Bounds(0.0, 1.0)
GAMMA = Bounds(0.0, losses.MAX_GAMMA)
# The range of every numeric field, the same for both trainers: torch's own checks (SGD: momentum and
# weight_decay >= 0; AdamW: betas in [0, 1), eps > 0; LinearLR: start_factor in (0, 1], end_factor in [0, 1]) and
# keras_odir's TorchSGD (momentum <= 1) together; a layer decay above 1 would train the stem fastest. CyclicLR's
# gamma scales the amplitude by gamma**epoch, which only shrinks for gamma <= 1. The
# losses' focusing exponents are >= 0 (odir_core.training.losses.MAX_GAMMA at most), focal_alpha a fraction or -1
# (no alpha weighting, torchvision's convention), and the ASL margin below 1 (at 1 every negative term vanishes).
NUMBER_RULES: dict[str, Bounds] = {
    "demo_patients": _whole(1, MAX_PATIENTS),
    "folds": Bounds(2, MAX_FOLDS, whole=True, special=0),
    "image_size": _whole(1, MAX_IMAGE_SIZE),
    "crop_size": _whole(0, MAX_IMAGE_SIZE),
    "batch_size": _whole(1, MAX_BATCH_SIZE),
    "lr": POSITIVE,
    "momentum": FRACTION,
    "weight_decay": Bounds(0.0),
    "adamw_beta1": Bounds(0.0, 1.0, high_open=True),
    "adamw_beta2": Bounds(0.0, 1.0, high_open=True),
    "adamw_eps": POSITIVE,
    "layer_decay": Bounds(0.0, 1.0, low_open=True),
    "linear_start_factor": Bounds(0.0, 1.0, low_open=True),
    "linear_end_factor": FRACTION,
    "linear_total_iters": _whole(0, MAX_EPOCHS),
    "cyclic_base_lr": POSITIVE,
    "cyclic_max_lr": POSITIVE,
    "cyclic_step_size_up": _whole(1, MAX_EPOCHS),
    "cyclic_gamma": Bounds(0.0, 1.0, low_open=True),
    "cyclic_base_momentum": FRACTION,
    "cyclic_max_momentum": FRACTION,
    "warmup_epochs": _whole(0, MAX_EPOCHS),
    "min_lr": Bounds(0.0),
    "focal_gamma": GAMMA,
    "focal_alpha": Bounds(0.0, 1.0, special=losses.NO_ALPHA),
    "asl_gamma_neg": GAMMA,
    "asl_gamma_pos": GAMMA,
    "asl_clip": Bounds(0.0, 1.0, high_open=True),
    "epochs": _whole(1, MAX_EPOCHS),
    "patience": _whole(0, MAX_EPOCHS),
    "seed": _whole(0, MAX_SEED),
    "workers": _whole(0, MAX_WORKERS),
}
# (field, field it must not exceed); a crop_size of 0 means no crop
NOT_ABOVE = (("crop_size", "image_size"), ("cyclic_base_lr", "cyclic_max_lr"),
             ("cyclic_base_momentum", "cyclic_max_momentum"), ("min_lr", "lr"))


def check_experiment_name(name: str) -> None:
    """Refuse an experiment name that is not one plain folder name (the run folder is RUN_DIR/<name>-<stamp>)."""
    if (name in ("", ".", "..") or "/" in name or "\\" in name or PureWindowsPath(name).drive
            or any(unicodedata.category(c) == "Cc" for c in name)):
        raise ConfigError(
            f"experiment = {name!r}: must be one folder name (not empty, . or .., no / or \\ or drive, no control "
            "characters), as the run folder is RUN_DIR/<experiment>-<timestamp>; choose where with --run-dir"
        )


def check_numbers(config: "TrainConfig") -> None:
    """Refuse a numeric field outside :data:`NUMBER_RULES` or above the field :data:`NOT_ABOVE` names."""
    for name, bounds in NUMBER_RULES.items():
        value = getattr(config, name)
        if not bounds.allows(value):
            raise ConfigError(f"{name} = {value}: must be {bounds.describe()}")
    for name, limit in NOT_ABOVE:
        if getattr(config, name) > getattr(config, limit):
            raise ConfigError(f"{name} = {getattr(config, name)}: must not exceed {limit} ({getattr(config, limit)})")


def check_schedule(config: "TrainConfig") -> None:
    """Refuse a schedule the optimizer or the run cannot follow: a cycled momentum with adamw (which has none),
    cyclic (one learning rate for all) with layer decay, a per-step schedule other than warmup_cosine, a warm-up as
    long as the run."""
    if config.scheduler == "cyclic" and config.cycle_momentum and config.optimizer != "sgd":
        raise ConfigError(f"scheduler = 'cyclic' cycles the momentum, which optimizer = {config.optimizer!r} has "
                          "not: add --no-cycle-momentum or use --optimizer sgd")
    if config.scheduler == "cyclic" and config.layer_decay != 1:
        raise ConfigError("scheduler = 'cyclic' sets one learning rate for every weight, which layer_decay "
                          f"= {config.layer_decay} scales: leave --layer-decay out or use another scheduler")
    if config.schedule_step == "step" and config.scheduler != "warmup_cosine":
        raise ConfigError(f"schedule_step = 'step' is for scheduler warmup_cosine, not {config.scheduler!r}: "
                          "leave --schedule-step out or use --scheduler warmup_cosine")
    if config.scheduler == "warmup_cosine" and config.warmup_epochs >= config.epochs:
        raise ConfigError(f"warmup_epochs = {config.warmup_epochs}: must be below epochs ({config.epochs}), "
                          "or the cosine never starts")


def check_fold(folds: int, fold: str) -> None:
    """Refuse a ``fold`` that is neither ``all`` nor a fold of ``folds``, or a fold without ``folds``."""
    if fold == "all":
        return
    if not folds:
        raise ConfigError(f"fold = {fold!r}: a fold is one of --folds K; give --folds too (or leave --fold out)")
    if not (fold.isascii() and fold.isdigit() and int(fold) < folds):
        raise ConfigError(f"fold = {fold!r}: must be 'all' or a fold number from 0 to {folds - 1} (--folds {folds})")


def checked_parameter(value, field_name: str, owner: str, name: str) -> float:
    """``value`` as a float when :data:`NUMBER_RULES` allows it for the field ``field_name``, else a ValueError
    naming ``owner`` and its parameter ``name`` (the loss classes' checks of the parameters the config holds)."""
    bounds = NUMBER_RULES[field_name]
    value = float(value)
    if not bounds.allows(value):
        raise ValueError(f"{owner}: {name} must be {bounds.describe()}, got {value}")
    return value


def _opt(default, help, choices=None, flag=None):  # noqa: A002 - mirrors argparse
    meta = {"help": help}
    if choices is not None:
        meta["choices"] = choices
    if flag is not None:
        meta["flag"] = flag
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Every option of a training run (see ``--help`` of the training CLIs)."""

    experiment: str = _opt("demo", "experiment name; the run folder is RUN_DIR/<experiment>-<timestamp>")
    # data
    data: str = _opt(
        "",
        "a prepared folder (annotations.xlsx + images/, from python -m odir_core.prepare), 'synthetic', or "
        "tfds:odir5k/CONFIG (built by python -m odir_core.tfds; data dir $TFDS_DATA_DIR); "
        "empty: data/odir5k when prepared there, else the synthetic demo set",
        flag="--data",
    )
    demo_patients: int = _opt(600, "patients in the synthetic demo set (data 'synthetic' or the empty default)")
    split: str = _opt(
        "study",
        "'study' (drop the 16 special-image patients, sklearn train_test_split 20%% with seed 42) "
        "or the path of a split file saved by odir_core.data.splits.save_split (train/val IDs)",
    )
    folds: int = _opt(
        0,
        "k-fold cross-validation over the split's training patients: K multi-label stratified folds (seeded by "
        "--seed), each fold's model trained on the others and validated on it; 0: no cross-validation",
    )
    fold: str = _opt(
        "all",
        "with --folds K: the fold held out for validation, 0..K-1, or 'all': every fold one after another in "
        "one cross-validation folder, then the out-of-fold probabilities of every training patient",
    )
    image_size: int = _opt(224, "side in pixels the prepared images are resized to when loaded")
    crop_size: int = _opt(
        0, "side of the random (train) / centre (val) crop; 0 or image_size: no crop"
    )
    augment: str = _opt(
        "none",
        "training augmentation: none; dual (coherent over both eyes: flips swap eyes, one colour "
        "jitter, rotation and crop per eye); independent (each eye on its own, no crop)",
        choices=AUGMENT_MODES,
    )
    normalize: bool = _opt(True, "normalise images with the ImageNet mean/std (--no-normalize: x/255)")
    # model
    backbone: str = _opt(DEFAULT_BACKBONE, "backbone shared by both eyes (torchvision's, without its classifier)",
                         choices=BACKBONES)
    head: str = _opt("v0", HEAD_HELP, choices=HEADS)
    fine_tune: bool = _opt(False, "train the backbone too (else frozen, BatchNorm in inference mode)")
    weights: str = _opt(
        "imagenet",
        "backbone weights: 'imagenet' (torchvision's ImageNet checkpoint of the backbone, from the torch hub "
        "folder, downloaded when missing), 'none' (random), or the path of a model file (.pth: a whole model, "
        "a torchvision backbone or RETFound's published file; keras_odir also .keras/.weights.h5)",
    )
    # optimisation
    batch_size: int = _opt(32, "patients per batch")
    balanced_sampler: bool = _opt(False, "draw training batches with the multi-label balanced sampler")
    loss: str = _opt(
        "bce",
        "training loss on the logits, mean over samples and labels: bce (binary cross-entropy), focal (Lin et al.'s "
        "focal loss, --focal-gamma, --focal-alpha) or asl (Ridnik et al.'s asymmetric loss, --asl-gamma-neg, "
        "--asl-gamma-pos, --asl-clip); the validation loss is the same loss without the class weights",
        choices=LOSSES,
    )
    focal_gamma: float = _opt(losses.FOCAL_GAMMA, "focal loss: focusing exponent gamma (0: alpha-weighted BCE)")
    focal_alpha: float = _opt(
        losses.FOCAL_ALPHA, "focal loss: weight alpha of the positive term, 1 - alpha of the negative one; -1: none"
    )
    asl_gamma_neg: float = _opt(losses.ASL_GAMMA_NEG, "asymmetric loss: focusing exponent of the negative term")
    asl_gamma_pos: float = _opt(losses.ASL_GAMMA_POS, "asymmetric loss: focusing exponent of the positive term")
    asl_clip: float = _opt(
        losses.ASL_CLIP, "asymmetric loss: probability margin m, negatives use max(p - m, 0) (0: no shift)"
    )
    weighted_loss: bool = _opt(
        False, "class weights pos_weight = negatives/positives per label on the training split, multiplying the "
        "positive term of the loss (BCE's pos_weight; likewise the positive term of focal and asl)"
    )
    optimizer: str = _opt(
        "sgd",
        "sgd (torch.optim.SGD) or adamw (torch.optim.AdamW: decoupled weight decay, and none for biases, norm "
        "weights and a ViT's class token and position embeddings)",
        choices=OPTIMIZERS,
    )
    lr: float = _opt(0.001, "learning rate (the start value of a schedule, the peak of warmup_cosine)")
    momentum: float = _opt(0.9, "SGD momentum (PyTorch semantics; cycled by the cyclic scheduler)")
    weight_decay: float = _opt(
        0.0, "weight decay: sgd's L2 added to the gradient; adamw's decoupled decay w -= lr * weight_decay * w"
    )
    adamw_beta1: float = _opt(0.9, "AdamW beta1 (running average of the gradient)")
    adamw_beta2: float = _opt(0.999, "AdamW beta2 (running average of the squared gradient)")
    adamw_eps: float = _opt(1e-8, "AdamW eps, added to the bias-corrected square root")
    layer_decay: float = _opt(
        1.0,
        "layer-wise learning-rate decay D: a weight at depth d of S (0 stem / patch embedding, ViT blocks or CNN "
        "stages 1..S, S+1 the rest and the head) trains with lr * D**(S+1-d); 1: off",
    )
    scheduler: str = _opt("none", "learning-rate schedule (warmup_cosine: per --schedule-step)", choices=SCHEDULERS)
    schedule_step: str = _opt(
        "epoch", "warmup_cosine changes the learning rate each epoch or each step (fractional epochs)",
        choices=SCHEDULE_STEPS,
    )
    linear_start_factor: float = _opt(1.0, "LinearLR start_factor")
    linear_end_factor: float = _opt(0.1, "LinearLR end_factor")
    linear_total_iters: int = _opt(50, "LinearLR total_iters (epochs)")
    cyclic_base_lr: float = _opt(0.001, "CyclicLR base_lr")
    cyclic_max_lr: float = _opt(0.1, "CyclicLR max_lr")
    cyclic_step_size_up: int = _opt(10, "CyclicLR step_size_up (epochs)")
    cyclic_mode: str = _opt("triangular2", "CyclicLR mode", choices=CYCLIC_MODES)
    cyclic_gamma: float = _opt(1.0, "CyclicLR gamma (exp_range mode)")
    cycle_momentum: bool = _opt(True, "CyclicLR cycles momentum inversely to the lr")
    cyclic_base_momentum: float = _opt(0.8, "CyclicLR base_momentum")
    cyclic_max_momentum: float = _opt(0.9, "CyclicLR max_momentum")
    warmup_epochs: int = _opt(0, "warmup_cosine: epochs of linear warm-up from 0 to lr")
    min_lr: float = _opt(0.0, "warmup_cosine: the learning rate at the end of the cosine")
    epochs: int = _opt(50, "maximum number of epochs")
    patience: int = _opt(5, "early stopping: epochs without a lower validation loss")
    # run
    seed: int = _opt(0, "seed of weights init, data order, augmentation and dropout")
    workers: int = _opt(0, "data loading worker processes (0: in the main process)")
    feature_cache: bool = _opt(
        True,
        "with a frozen backbone and augment none, compute backbone features once and train the "
        "head on them (--no-feature-cache: run the backbone every step)",
    )
    train_metrics: str = _opt(
        "epoch",
        "train metrics of each epoch from: epoch (the training-mode outputs of the epoch's batches, as the "
        "study does) or clean (an extra pass over the training split in inference mode, no augmentation)",
        choices=TRAIN_METRICS,
    )
    sync_bn: bool = _opt(
        False,
        "under several processes, BatchNorm over the global batch (torch SyncBatchNorm, CUDA only; jax already "
        "normalises over the global batch); default: each process normalises its own slice, as DDP does",
    )
    compile: bool = _opt(  # noqa: A003 - the flag's name
        False,
        "compile the forward pass: torch.compile (torch_odir; keras_odir on the torch backend compiles its graph "
        "executor's plan), Keras' jit_compile on jax and tensorflow; the first steps of each mode take the compile time",
    )
    device: str = _opt("auto", "'auto' (cuda when available), 'cpu', 'cuda', 'cuda:N'; an unavailable one is an "
                       "error (keras_odir: on the torch backend; jax and tensorflow take auto only)")
    precision: str = _opt(
        "float32",
        "compute precision: float32, or bf16 / fp16 mixed precision (Keras dtype policy, torch autocast; "
        "weights, logits and checkpoints stay float32; fp16 with dynamic loss scaling)",
        choices=PRECISIONS,
    )
    run_dir: str = _opt("runs", "folder under which the run folder is created")
    resume: str = _opt(
        "", "resume the interrupted run in this run folder (its config.toml is the base config)"
    )

    def __post_init__(self) -> None:
        for name, allowed in (("backbone", BACKBONES), ("head", HEADS), ("augment", AUGMENT_MODES),
                              ("precision", PRECISIONS), ("train_metrics", TRAIN_METRICS),
                              ("scheduler", SCHEDULERS), ("loss", LOSSES), ("optimizer", OPTIMIZERS),
                              ("schedule_step", SCHEDULE_STEPS),
                              ("cyclic_mode", CYCLIC_MODES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} = {getattr(self, name)!r}: use one of {', '.join(allowed)}")
        check_experiment_name(self.experiment)
        check_numbers(self)
        check_fold(self.folds, self.fold)
        check_schedule(self)

    @property
    def input_size(self) -> int:
        """Side of the network input: the crop size when cropping, else the image size."""
        return self.crop_size if self.crop_size else self.image_size

    @property
    def backbone_spec(self) -> BackboneSpec:
        """The spec of ``backbone`` (``odir_core.model.model_spec.BACKBONES``)."""
        return model_spec.backbone_spec(self.backbone)

    @property
    def head_spec(self) -> HeadSpec:
        """The spec of ``head`` (``odir_core.model.model_spec.HEADS``)."""
        return model_spec.head_spec(self.head)

    @property
    def uses_feature_cache(self) -> bool:
        """Whether backbone features can be computed once (frozen backbone, no augmentation, a head on pooled
        features: the feature maps a correlation head needs are too large to keep)."""
        return self.feature_cache and not self.fine_tune and self.augment == "none" and not self.head_spec.uses_maps

    def scheduler_params(self) -> dict[str, Any]:
        """Keyword arguments of the chosen schedule (torch scheduler parameter names)."""
        if self.scheduler == "linear":
            return {
                "start_factor": self.linear_start_factor,
                "end_factor": self.linear_end_factor,
                "total_iters": self.linear_total_iters,
            }
        if self.scheduler == "cyclic":
            return {
                "base_lr": self.cyclic_base_lr,
                "max_lr": self.cyclic_max_lr,
                "step_size_up": self.cyclic_step_size_up,
                "mode": self.cyclic_mode,
                "gamma": self.cyclic_gamma,
                "cycle_momentum": self.cycle_momentum,
                "base_momentum": self.cyclic_base_momentum,
                "max_momentum": self.cyclic_max_momentum,
            }
        if self.scheduler == "warmup_cosine":
            return {"epochs": self.epochs, "warmup_epochs": self.warmup_epochs, "min_lr": self.min_lr}
        return {}

    def schedule(self, steps_per_epoch: int) -> Schedule:
        """The run's learning-rate schedule (``odir_core.training.schedules``); per optimizer step over
        ``steps_per_epoch`` steps with ``schedule_step`` step."""
        params = self.scheduler_params()
        if self.schedule_step == "step":
            params["steps_per_epoch"] = steps_per_epoch
        return make_schedule(self.scheduler, self.lr, **params)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field (TOML-serialisable)."""
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "TrainConfig":
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def field_type(f: dataclasses.Field) -> type:
    """The type of a field's values (that of its default)."""
    return type(f.default)
