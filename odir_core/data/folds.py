"""k-fold cross-validation folds of patients: multi-label stratified, seeded, saved as JSON beside the runs.

The folds come from ``odir_core.data.splits.iterative_stratification`` (Sechidis et al. 2011, K equal parts);
the ``iterative-stratification`` package's ``MultilabelStratifiedKFold`` spreads the labels as evenly on ODIR-5K,
but it installs a top-level ``tests`` package into site-packages that shadows a project's own.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from odir_core.atomic import atomic_write_text
from odir_core.data.annotations import label_matrix
from odir_core.data.splits import SplitError, iterative_stratification

FOLDS_FILE = "folds.json"


def fold_assignment(frame: pd.DataFrame, folds: int, seed: int) -> np.ndarray:
    """The fold (0..folds-1) of each row of ``frame`` (patients with label columns N..O): every patient in
    exactly one fold, each label's patients spread over the folds as evenly as the stratification can."""
    if len(frame) < folds:
        raise SplitError(f"--folds {folds}: only {len(frame)} training patients; use at most {len(frame)} folds")
    return iterative_stratification(label_matrix(frame), [1.0 / folds] * folds, seed=seed)


def fold_frames(frame: pd.DataFrame, assignment: np.ndarray, fold: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the other folds' rows, fold ``fold``'s rows) of ``frame``, each in ``frame``'s order."""
    held_out = np.asarray(assignment) == fold
    return frame[~held_out].reset_index(drop=True), frame[held_out].reset_index(drop=True)


def save_folds(path, frame: pd.DataFrame, assignment: np.ndarray, folds: int, seed: int) -> Path:
    """Write the ``folds`` folds as JSON, atomically: ``{"folds": K, "seed": S, "ids": [[IDs of fold 0], ...]}``."""
    ids = frame["ID"].to_numpy()
    data = {"folds": folds, "seed": int(seed), "ids": [[int(i) for i in ids[assignment == k]] for k in range(folds)]}
    return atomic_write_text(path, json.dumps(data, indent=1))


def load_folds(path) -> list[list[int]]:
    """The patient IDs of each fold from a file :func:`save_folds` wrote (checked: lists of distinct integers)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        ids = data["ids"]
    except FileNotFoundError:
        raise SplitError(f"{path}: folds file not found; the cross-validation folder is incomplete") from None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise SplitError(f"{path}: not a folds file ({type(exc).__name__}: {exc})") from None
    if not isinstance(ids, list) or not all(isinstance(f, list) and all(
            isinstance(i, int) and not isinstance(i, bool) for i in f) for f in ids):
        raise SplitError(f"{path}: 'ids' must be a list of lists of integer patient IDs")
    flat = [i for f in ids for i in f]
    if len(flat) != len(set(flat)):
        raise SplitError(f"{path}: a patient ID is in more than one fold")
    return ids
