"""Per-epoch training history of a run: its records, ``train_results.xlsx`` and ``history.csv``.

``train_results.xlsx`` has exactly the study's layout (an unnamed index column, then the study's
columns of :mod:`odir_core.metric_table`: ``train_loss, train_kappa, train_f1, train_auc,
train_final_score, val_loss, val_kappa, val_f1, val_auc, val_final_score``); its index is the study's
0-based one, the only place where the first epoch is 0. ``history.csv`` has every logged value (also
the challenge metrics, learning rate and momentum) with an ``epoch`` column numbered from 1, as the
console and the TensorBoard steps. An epoch's record is made by :mod:`odir_core.training.epoch_metrics`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from odir_core.atomic import atomic_path
from odir_core.metric_table import STUDY_COLUMNS
from odir_core.spreadsheets import write_xlsx

RESULTS_FILE = "train_results.xlsx"
HISTORY_FILE = "history.csv"


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
