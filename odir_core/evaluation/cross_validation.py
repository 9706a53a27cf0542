"""k-fold cross-validation with either trainer: ``--folds K --fold all`` trains every fold's model in turn
in one cross-validation folder, then predicts each training patient with the model that did not train on it.

::

    RUN_DIR/<experiment>-<timestamp>/
      config.toml                the settings (fold = "all")
      folds.json                 the patient IDs of each fold (odir_core.data.folds)
      fold-<i>-<timestamp>/      fold i's training run: trained on the other folds, validated on fold i
      oof/ground_truth.xlsx      the split's training patients' labels (the study's format)
      oof/probs.xlsx             their out-of-fold probabilities: ``evaluate --probs oof/probs.xlsx
                                 --tune-thresholds`` tunes thresholds on them
      finished.json              written last

The split's validation patients are in no fold: they stay held out for evaluating the fold models, one by
one or as an ensemble. ``--resume FOLDER`` goes on where an interrupted cross-validation stopped: finished
folds are kept, an interrupted fold resumes from its backup, the others start.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from odir_core import scores
from odir_core.atomic import atomic_write_text
from odir_core.data.annotations import label_matrix
from odir_core.data.dataset import DualEyeDataset
from odir_core.data.folds import FOLDS_FILE, fold_assignment, load_folds, save_folds
from odir_core.data.tfds import source as tfds_source
from odir_core.errors import writing
from odir_core.evaluation.inference import Backend, load_model, predict_dataset
from odir_core.evaluation.reports import write_label_xlsx
from odir_core.labels import LABELS
from odir_core.training.config import TrainConfig
from odir_core.training.config_files import save_config
from odir_core.training.ranks import DistributedError, Ranks
from odir_core.training.run import (
    CONFIG_FILE,
    FINISHED_FILE,
    ResumeError,
    check_unchanged,
    new_run_dir,
    resolve_data,
    split_patients,
)

OOF_DIR = "oof"
OOF_PROBS, OOF_TRUTH = "probs.xlsx", "ground_truth.xlsx"


def fold_runs(folder: Path, fold: int) -> list[Path]:
    """The run folders of fold ``fold`` in a cross-validation folder, oldest first."""
    return sorted(path.parent for path in folder.glob(f"fold-{fold}-*/{CONFIG_FILE}"))


def _fold_run(folder: Path, fold: int) -> Path | None:
    """Fold ``fold``'s run: its finished one, else its latest, else None."""
    runs = fold_runs(folder, fold)
    finished = [run for run in runs if (run / FINISHED_FILE).is_file()]
    return (finished or runs or [None])[-1]


def _resolved(config: TrainConfig, log) -> tuple[TrainConfig, Path]:
    data_dir, description = resolve_data(config.data, log, config.demo_patients)
    log(f"Data: {description}")
    data = str(data_dir) if tfds_source.is_tfds_source(str(data_dir)) else str(Path(data_dir).resolve())
    return config.replace(data=data, resume="", run_dir=str(Path(config.run_dir))), data_dir


def _open(config: TrainConfig, resolved: TrainConfig, data_dir: Path) -> tuple[Path, bool]:
    """The cross-validation folder (created with its config and folds, or the one to resume) and whether new."""
    if config.resume:
        folder = Path(config.resume)
        if not (folder / CONFIG_FILE).is_file() or not (folder / FOLDS_FILE).is_file():
            raise ResumeError(f"--resume {folder}: not a cross-validation folder (no {CONFIG_FILE} and {FOLDS_FILE})")
        if (folder / FINISHED_FILE).is_file():
            raise ResumeError(f"{folder}: the cross-validation has finished ({FINISHED_FILE}); start a new one")
        check_unchanged(folder, resolved)
        return folder, False
    pool, _ = split_patients(data_dir, resolved.split)
    assignment = fold_assignment(pool, resolved.folds, resolved.seed)
    folder = new_run_dir(resolved.run_dir, resolved.experiment)
    try:
        with writing(folder):
            save_config(resolved, folder / CONFIG_FILE)
            save_folds(folder / FOLDS_FILE, pool, assignment, resolved.folds, resolved.seed)
    except BaseException:
        _remove_empty(folder)
        raise
    return folder, True


def _remove_empty(folder: Path) -> None:
    """Remove a new cross-validation folder that holds no fold run yet (only its own files)."""
    if any(folder.glob(f"fold-*/{CONFIG_FILE}")):
        return
    for name in (CONFIG_FILE, FOLDS_FILE):
        (folder / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        folder.rmdir()


def cross_validate(train: Callable[[TrainConfig], Path], backend: Backend, config: TrainConfig,
                   log: Callable[[str], None] = print) -> Path:
    """Train fold 0..K-1 of ``config`` (``folds`` = K, ``fold`` = all) with ``train`` (a trainer's
    ``train(config)``), then write the out-of-fold probabilities with ``backend``'s models; returns the
    cross-validation folder."""
    if Ranks.from_env().distributed:
        raise DistributedError("--fold all under several processes: launch each fold on its own with --fold I")
    resolved, data_dir = _resolved(config, log)
    folder, new = _open(config, resolved, data_dir)
    log(f"Cross-validation folder: {folder} ({resolved.folds} folds)")
    try:
        for fold in range(resolved.folds):
            run = _fold_run(folder, fold)
            fold_config = resolved.replace(fold=str(fold), experiment=f"fold-{fold}", run_dir=str(folder))
            if run is not None and (run / FINISHED_FILE).is_file():
                log(f"Fold {fold}: finished in {run}")
                continue
            log(f"Fold {fold} of {resolved.folds}" + (f": resuming {run}" if run is not None else ""))
            train(fold_config.replace(resume=str(run)) if run is not None else fold_config)
        write_out_of_fold(folder, backend, resolved, data_dir, log)
        atomic_write_text(folder / FINISHED_FILE, json.dumps({"folds": resolved.folds}) + "\n")
    except BaseException:
        if new:
            _remove_empty(folder)
        raise
    return folder


def out_of_fold(folder: Path, backend: Backend, config: TrainConfig, data_dir: Path,
                log: Callable[[str], None] = print) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(IDs, labels, probabilities) of the split's training patients, each patient's probabilities from the
    best model of the fold that held it out."""
    pool, _ = split_patients(data_dir, config.split)
    position = {int(pid): row for row, pid in enumerate(pool["ID"])}
    probs = np.full((len(pool), len(LABELS)), np.nan)
    for fold, ids in enumerate(load_folds(folder / FOLDS_FILE)):
        run = _fold_run(folder, fold)
        if run is None or not (run / FINISHED_FILE).is_file():
            raise ResumeError(f"{folder}: fold {fold} has no finished run; continue with --resume {folder}")
        model = load_model(backend, run / f"best{backend.model_suffix}", device=config.device)
        rows = [position[pid] for pid in ids]
        dataset = DualEyeDataset(data_dir, pool.iloc[rows], image_size=model.config.image_size,
                                 crop_size=model.config.crop_size, normalize=model.config.normalize, train=False)
        probs[rows] = predict_dataset(model.predictor, dataset, batch_size=config.batch_size, desc=f"fold {fold}")
        log(f"Fold {fold}: {len(rows)} out-of-fold patients predicted by {model.path}")
    return pool["ID"].to_numpy(), label_matrix(pool), probs


def write_out_of_fold(folder: Path, backend: Backend, config: TrainConfig, data_dir: Path,
                      log: Callable[[str], None] = print) -> Path:
    """Write ``oof/ground_truth.xlsx`` and then ``oof/probs.xlsx`` (the study's format); returns the folder."""
    ids, y_true, y_prob = out_of_fold(folder, backend, config, data_dir, log)
    out = folder / OOF_DIR
    with writing(out):
        out.mkdir(exist_ok=True)
        write_label_xlsx(out / OOF_TRUTH, ids, y_true)
        write_label_xlsx(out / OOF_PROBS, ids, y_prob)
    result = scores.study_metrics(y_true, y_prob)
    log(f"Out-of-fold ({len(ids)} patients): final {result['final']:.4f} (kappa {result['kappa']:.4f}, "
        f"F1 {result['f1']:.4f}, AUC {result['auc']:.4f}) -> {out / OOF_PROBS}; tune thresholds on them with "
        f"`evaluate --probs {out / OOF_PROBS} --tune-thresholds`")
    return out
