"""Per-epoch training history: metrics from predictions, ``train_results.xlsx`` and ``history.csv``.

``train_results.xlsx`` has exactly the study's layout (an unnamed index column, then the study's
columns of :mod:`odir_core.metric_table`: ``train_loss, train_kappa, train_f1, train_auc,
train_final_score, val_loss, val_kappa, val_f1, val_auc, val_final_score``); its index is the study's
0-based one, the only place where the first epoch is 0. ``history.csv`` has every logged value (also
the challenge metrics, learning rate and momentum) with an ``epoch`` column numbered from 1, as the
console and the TensorBoard steps.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from odir_core.atomic import atomic_path
from odir_core.metric_table import SCORES, STUDY_COLUMNS
from odir_core.scores import MetricsWarning, challenge_metrics, study_metrics
from odir_core.spreadsheets import write_xlsx

RESULTS_FILE = "train_results.xlsx"
HISTORY_FILE = "history.csv"


def sigmoid(logits) -> np.ndarray:
    """Numerically stable logistic function, float64."""
    x = np.asarray(logits, dtype=np.float64)
    return np.exp(-np.logaddexp(0.0, -x))


def bce_with_logits(logits, targets, pos_weight=None) -> float:
    """Binary cross-entropy on logits, mean over samples and labels (torch's formula); ``pos_weight`` (one
    per label) weights the positive term as ``BCEWithLogitsLoss(pos_weight=...)``, None: unweighted."""
    x = np.asarray(logits, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    if pos_weight is None:
        return float(np.mean(np.logaddexp(0.0, x) - y * x))
    w = np.asarray(pos_weight, dtype=np.float64)
    return float(np.mean(w * y * np.logaddexp(0.0, -x) + (1.0 - y) * np.logaddexp(0.0, x)))


def split_metrics(split: str, y_true, logits) -> dict[str, float]:
    """The study's and the challenge's metrics of one split's logits, keys ``<split>_<metric>``
    (the scores of odir_core.metric_table, in its order).

    Labels absent from a small split make some scores undefined; those are averaged out
    (odir_core.scores) without a warning per epoch.
    """
    prob = sigmoid(logits)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MetricsWarning)
        sets = {False: study_metrics(y_true, prob), True: challenge_metrics(y_true, prob)}
    return {m.column(split): sets[m.challenge][m.score] for m in SCORES}


class History:
    """Epoch records of one run, written after every epoch (atomically) into the run folder."""

    def __init__(self, run_dir, write_csv: bool = True, files: bool = True):
        self.run_dir = Path(run_dir)
        self.write_csv = write_csv
        self.files = files  # False: keep the records only (the other ranks of a distributed run)
        self.records: list[dict[str, float]] = []

    def load(self, epochs: int) -> list[dict[str, float]]:
        """Resume: read the first ``epochs`` records back from ``train_results.xlsx`` (the study columns)
        and, when present, ``history.csv`` (every column); later rows (an epoch that finished after
        the last backup) are dropped."""
        csv_path = self.run_dir / HISTORY_FILE
        xlsx_path = self.run_dir / RESULTS_FILE
        if csv_path.is_file():
            frame = pd.read_csv(csv_path).drop(columns="epoch")
        elif xlsx_path.is_file():
            frame = pd.read_excel(xlsx_path, index_col=0)
        else:
            frame = pd.DataFrame(columns=STUDY_COLUMNS)
        if len(frame) < epochs:
            raise ValueError(
                f"{self.run_dir}: history has {len(frame)} epochs but the backup is at epoch {epochs}; "
                "the run folder is incomplete, start a new run"
            )
        self.records = [
            {k: float(v) for k, v in row.items() if pd.notna(v)} for row in frame.iloc[:epochs].to_dict("records")
        ]
        return self.records

    def append(self, record: dict[str, float]) -> None:
        """Add one epoch's record and rewrite the files (when it writes files)."""
        self.records.append({k: float(v) for k, v in record.items() if v is not None})
        if self.files:
            self.write()

    def frame(self) -> pd.DataFrame:
        """Every record as a DataFrame (index = 0-based position, the study's epoch index)."""
        return pd.DataFrame(self.records)

    def write(self) -> None:
        """Write ``train_results.xlsx`` (the study's columns and 0-based index) and, if enabled,
        ``history.csv`` (every value, ``epoch`` from 1)."""
        frame = self.frame()
        study = frame.reindex(columns=STUDY_COLUMNS)
        with atomic_path(self.run_dir / RESULTS_FILE) as tmp:
            write_xlsx(study, tmp)  # unnamed 0-based index column, as the study's file
        if self.write_csv:
            numbered = frame.set_axis(pd.RangeIndex(1, len(frame) + 1, name="epoch"))
            with atomic_path(self.run_dir / HISTORY_FILE) as tmp:
                numbered.to_csv(tmp)

    def best_epoch(self, key: str = "val_loss") -> int | None:
        """Position (0-based; the epoch number is this + 1) of the record with the lowest finite ``key``, or None."""
        values = [r.get(key, np.nan) for r in self.records]
        finite = [(v, i) for i, v in enumerate(values) if np.isfinite(v)]
        return min(finite)[1] if finite else None


def early_stopping_state(val_losses, patience: int) -> tuple[float, int, int | None]:
    """(best loss, epochs waited since it, best epoch) after ``val_losses``; Keras EarlyStopping rules
    (strictly lower counts as an improvement)."""
    best, wait, best_epoch = np.inf, 0, None
    for epoch, loss in enumerate(val_losses):
        if loss < best:
            best, wait, best_epoch = float(loss), 0, epoch
        else:
            wait += 1
    return best, wait, best_epoch


def should_stop(wait: int, patience: int) -> bool:
    """Early stopping decision after an epoch: ``patience`` epochs without improvement."""
    return patience > 0 and wait >= patience
