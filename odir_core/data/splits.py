"""Patient splits: the study's exact split, iterative multi-label stratification,
the OIA-ODIR test sets, and saving/loading split ID lists."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from odir_core.errors import InputError

from odir_core.atomic import atomic_write_text
from odir_core.data.annotations import is_special, label_matrix, read_annotations
from odir_core.data.layouts import OIA, Layout

SPLIT_NAMES = ("train", "val", "test")
# a training set of one patient is one batch of one pair, which training leaves out (distributed.training_rows)
MIN_TRAINING_PATIENTS = 2


class SplitError(InputError):
    """A split file or request that cannot be used."""


def study_patients_needed(val_size: float = 0.2, train: int = MIN_TRAINING_PATIENTS) -> int:
    """Fewest patients whose study split leaves ``train`` training patients and one validation patient
    (train_test_split puts ceil(val_size * n) of n patients in validation)."""
    n = train + 1
    while n - math.ceil(val_size * n) < train:
        n += 1
    return n


def study_split(
    df: pd.DataFrame, val_size: float = 0.2, seed: int = 42, source="the annotations"
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The original study's split: drop patients with a special image (order
    kept), then sklearn train_test_split(df, test_size=val_size, random_state=seed).

    Returns (train, val), rows in the order train_test_split gives them. Too few patients for both parts:
    one line naming ``source`` and how many are needed.
    """
    kept = df[~is_special(df)].reset_index(drop=True)
    if len(kept) < study_patients_needed(val_size, train=1):
        raise SplitError(_too_few_study(source, f"{len(kept)} patient(s) without a special image", val_size))
    train, val = train_test_split(kept, test_size=val_size, random_state=seed)
    return train.reset_index(drop=True), val.reset_index(drop=True)


def iterative_stratification(labels: np.ndarray, proportions, seed: int | None = None) -> np.ndarray:
    """Assign each row of a binary (n, L) label matrix to one of len(proportions)
    subsets by iterative stratification (Sechidis, Tsoumakas, Vlahavas 2011).

    Returns an int array of subset indices. Ties are broken with a seeded
    numpy Generator, so a seed gives the same assignment.
    """
    y = np.asarray(labels).astype(bool)
    if y.ndim != 2:
        raise SplitError(f"labels must be a 2-D (patients, labels) matrix, got shape {y.shape}")
    r = np.asarray(proportions, dtype=float)
    if (r < 0).any() or not np.isclose(r.sum(), 1.0):
        raise SplitError(f"proportions must be >= 0 and sum to 1, got {list(r)}")
    rng = np.random.default_rng(seed)
    n = len(y)
    order = rng.permutation(n)  # examples are visited in a seeded random order
    want = r * n  # desired number of examples per subset
    want_label = np.outer(r, y.sum(axis=0)).astype(float)  # (subsets, labels)
    subset = np.full(n, -1, dtype=int)
    remaining = y[order].copy()
    unassigned = np.ones(n, dtype=bool)

    def choose(candidates: np.ndarray) -> int:
        best = candidates[want[candidates] == want[candidates].max()]
        return int(best[rng.integers(len(best))]) if len(best) > 1 else int(best[0])

    while True:
        counts = remaining[unassigned].sum(axis=0)
        live = np.flatnonzero(counts > 0)
        if live.size == 0:
            break
        rarest = live[counts[live] == counts[live].min()]
        label = int(rarest[rng.integers(len(rarest))])
        for pos in np.flatnonzero(unassigned & remaining[:, label]):
            col = want_label[:, label]
            m = choose(np.flatnonzero(col == col.max()))
            subset[order[pos]] = m
            unassigned[pos] = False
            want[m] -= 1
            want_label[m] -= remaining[pos]
    for pos in np.flatnonzero(unassigned):  # examples without any label
        m = choose(np.arange(len(r)))
        subset[order[pos]] = m
        want[m] -= 1
    return subset


def stratified_split(
    df: pd.DataFrame, val_size: float = 0.2, test_size: float = 0.0, seed: int = 42
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Multi-label iteratively stratified (train, val, test) split of patients.

    Each part keeps the input's row order; test is empty when test_size is 0.
    """
    if not (0 <= val_size < 1 and 0 <= test_size < 1 and val_size + test_size < 1):
        raise SplitError(f"val_size ({val_size}) and test_size ({test_size}) must be in [0, 1) and sum below 1")
    part = iterative_stratification(
        label_matrix(df), [1 - val_size - test_size, val_size, test_size], seed=seed
    )
    return tuple(df[part == k].reset_index(drop=True) for k in range(3))


def _find(root: Path, relative: str) -> Path | None:
    """root/relative, also when the release uses underscores for spaces."""
    for candidate in (relative, relative.replace(" ", "_")):
        if (root / candidate).is_file():
            return root / candidate
    return None


def load_test_sets(root, layout: Layout = OIA) -> dict[str, pd.DataFrame]:
    """The layout's held-out test sets present under root (e.g. OIA-ODIR
    "off_site_test", "on_site_test"), each read with read_annotations."""
    root = Path(root)
    found = {}
    for name, annotations, _images in layout.test_sets:
        path = _find(root, annotations)
        if path is not None:
            found[name] = read_annotations(path, exclude_special=False)
    return found


def save_split(path, train_ids, val_ids, test_ids=None) -> Path:
    """Write a split's patient IDs to JSON ({"train": [...], "val": [...],
    optionally "test": [...]}) atomically."""
    parts = {"train": train_ids, "val": val_ids}
    if test_ids is not None:
        parts["test"] = test_ids
    data = {name: [int(i) for i in ids] for name, ids in parts.items()}
    _check_disjoint(data, path)
    return atomic_write_text(path, json.dumps(data, indent=1))  # the user's umask applies


def load_split(path) -> dict[str, list[int]]:
    """Read a split written by save_split: dict part name -> list of IDs."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise SplitError(f"{path}: split file not found; write one with save_split") from None
    except (OSError, ValueError) as exc:
        raise SplitError(f"{path}: not a readable JSON split file ({exc}); write it again with save_split") from None
    if not isinstance(data, dict) or not {"train", "val"} <= set(data) or not set(data) <= set(SPLIT_NAMES):
        raise SplitError(f"{path}: expected a JSON object with keys train, val (and optionally test)")
    out = {}
    for name, ids in data.items():
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise SplitError(f"{path}: {name!r} must be a list of integer patient IDs")
        out[name] = ids
    _check_disjoint(out, path)
    return out


def _check_disjoint(parts: dict, path) -> None:
    seen: dict = {}
    for name, ids in parts.items():
        for pid in ids:
            if pid in seen:
                where = "twice in" if seen[pid] == name else f"in both {seen[pid]!r} and"
                raise SplitError(f"{path}: patient ID {pid} is {where} {name!r}; each patient belongs to one part")
            seen[pid] = name


def _too_few_study(source, found: str, val_size: float = 0.2) -> str:
    return (f"{source}: {found}; training with the study split needs at least {study_patients_needed(val_size)} "
            f"patients ({MIN_TRAINING_PATIENTS} to train on, 1 to validate): add patients to the data set")


def check_training_split(train: int, val: int, split: str, source) -> None:
    """Refuse with one line a split of ``source`` (the data set) too small to train on: fewer than
    ``MIN_TRAINING_PATIENTS`` training or no validation patients."""
    if train >= MIN_TRAINING_PATIENTS and val >= 1:
        return
    found = f"split {split} leaves {train} training and {val} validation patient(s)"
    if split == "study":
        raise SplitError(_too_few_study(source, found))
    raise SplitError(f"{source}: {found}; training needs at least {MIN_TRAINING_PATIENTS} training patients and "
                     f"1 validation patient: list more patients in {split}")


def split_frames(df: pd.DataFrame, split: str, source="the annotations") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train, val) rows of ``df`` (read from ``source``, named in errors): ``"study"`` (the study's split) or
    a split file of patient IDs."""
    if split == "study":
        return study_split(df, source=source)
    parts = load_split(split)
    by_id = df.set_index("ID", drop=False)
    frames = []
    for name in ("train", "val"):
        missing = [i for i in parts[name] if i not in by_id.index]
        if missing:
            raise SplitError(
                f"{split}: {len(missing)} {name} patient ID(s) not in the annotations, e.g. {missing[:5]}; "
                "the split file belongs to other data"
            )
        frames.append(by_id.loc[parts[name]].reset_index(drop=True))
    return frames[0], frames[1]
