"""The metric table drives every name of an epoch's values: the history keys (history.csv columns), the
study's train_results.xlsx columns, the console line, the TensorBoard tags and the run's summary line.
Expected values are written out here, as the README and the study's files show them."""

import math

import numpy as np
import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from odir_core.metric_table import STUDY_COLUMNS
from odir_core.training.console import epoch_line
from odir_core.training.epoch_metrics import epoch_record
from odir_core.training.history import History
from odir_core.training.run import log_summary
from odir_core.training.tensorboard import ScalarWriter
from reference_data import EXPERIMENTS, require

HISTORY_COLUMNS = [
    "train_loss", "train_kappa", "train_f1", "train_auc", "train_final_score", "train_challenge_kappa",
    "train_challenge_f1", "train_challenge_auc", "train_challenge_final",
    "val_loss", "val_kappa", "val_f1", "val_auc", "val_final_score", "val_challenge_kappa",
    "val_challenge_f1", "val_challenge_auc", "val_challenge_final", "lr", "momentum",
]
XLSX_COLUMNS = ["train_loss", "train_kappa", "train_f1", "train_auc", "train_final_score",
                "val_loss", "val_kappa", "val_f1", "val_auc", "val_final_score"]
PER_SPLIT_TAGS = ("Loss", "Kappa", "F1", "AUC", "FINAL", "Challenge_Kappa", "Challenge_F1", "Challenge_AUC",
                  "Challenge_FINAL")
RECORD = {
    "train_loss": 0.4123, "train_kappa": 0.21, "train_f1": 0.52, "train_auc": 0.83, "train_final_score": 0.52,
    "train_challenge_kappa": 0.31, "train_challenge_f1": 0.62, "train_challenge_auc": 0.86,
    "train_challenge_final": 0.5967, "val_loss": 0.3901, "val_kappa": 0.123, "val_f1": 0.457, "val_auc": 0.789,
    "val_final_score": 0.456, "val_challenge_kappa": 0.3, "val_challenge_f1": 0.7, "val_challenge_auc": 0.836,
    "val_challenge_final": 0.612, "lr": 0.0081, "momentum": 0.9,
}


def test_epoch_record_keys_are_the_history_columns():
    rng = np.random.default_rng(0)
    y_train, y_val = rng.integers(0, 2, (12, 8)), rng.integers(0, 2, (10, 8))
    record = epoch_record(0.5, lambda: (y_train, rng.normal(size=(12, 8)), rng.normal(size=(10, 8))), y_val,
                          0.01, 0.9)
    assert list(record) == HISTORY_COLUMNS
    assert list(epoch_record(math.nan, None, y_val, 0.01, 0.9)) == ["train_loss", "val_loss", "lr", "momentum"]


def test_console_line_is_the_readmes():
    assert epoch_line(3, 8, RECORD) == (
        "Epoch 3/8  loss 0.4123 | val loss 0.3901 kappa 0.123 F1 0.457 AUC 0.789 final 0.456 challenge final 0.612"
        " | lr 0.0081 momentum 0.9")


def test_history_and_study_columns(tmp_path):
    history = History(tmp_path)
    history.append(RECORD)
    assert (tmp_path / "history.csv").read_text().splitlines()[0] == ",".join(["epoch", *HISTORY_COLUMNS])
    results = pd.read_excel(tmp_path / "train_results.xlsx")
    assert list(results.columns) == ["Unnamed: 0", *XLSX_COLUMNS]
    assert results.iloc[0, 1:].tolist() == pytest.approx([RECORD[c] for c in XLSX_COLUMNS])
    assert STUDY_COLUMNS == XLSX_COLUMNS


def test_study_columns_are_those_of_the_studys_files():
    study = pd.read_excel(require(EXPERIMENTS / "experiment_0" / "train_results.xlsx"))
    assert list(study.columns) == ["Unnamed: 0", *STUDY_COLUMNS]


def test_tensorboard_tags(tmp_path):
    writer = ScalarWriter(tmp_path)
    writer.log_epoch(1, RECORD)
    writer.close()
    found = {}
    for folder in sorted(tmp_path.iterdir()):
        acc = EventAccumulator(str(folder))
        acc.Reload()
        found[folder.name] = {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    expected = {f"{tag}_{split}": {tag: [pytest.approx(RECORD[f"{split}_{key}"])]}
                for tag, key in zip(PER_SPLIT_TAGS, ("loss", "kappa", "f1", "auc", "final_score", "challenge_kappa",
                                                     "challenge_f1", "challenge_auc", "challenge_final"))
                for split in ("train", "val")}
    expected.update(lr={"lr": [pytest.approx(0.0081)]}, momentum={"momentum": [pytest.approx(0.9)]})
    assert found == expected


def test_summary_names_the_best_epochs_study_scores(tmp_path):
    history = History(tmp_path, files=False)
    history.append({**RECORD, "val_loss": 0.5})
    history.append(RECORD)
    lines = []
    log_summary(history, tmp_path, "best.pth", 0.0, log=lines.append)
    assert lines[1] == (f"Best epoch 2: val_loss 0.3901, val final 0.4560 (kappa 0.1230, F1 0.4570, AUC 0.7890) "
                        f"-> {tmp_path / 'best.pth'}")
