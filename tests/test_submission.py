"""odir_core.evaluation.submission: label files read, and submissions checked as the official ODIR-2019 script does."""

import numpy as np
import pandas as pd
import pytest

from label_frames import label_frames
from odir_core.evaluation.submission import SubmissionError, check_submission, read_label_file
from odir_core.labels import LABELS
from odir_core.scores import MetricsError


@pytest.mark.parametrize("suffix", [".csv", ".xlsx"])
def test_read_label_file_round_trip(tmp_path, suffix):
    gt, sub = label_frames()
    path = tmp_path / f"probs{suffix}"
    extra = sub.assign(note="x")[["note", *sub.columns]]
    extra.to_csv(path, index=False) if suffix == ".csv" else extra.to_excel(path, index=False)
    got = read_label_file(path)
    assert got.columns.tolist() == ["ID", *LABELS]
    assert got["ID"].dtype == np.int64
    np.testing.assert_allclose(got[list(LABELS)].to_numpy(), sub[list(LABELS)].to_numpy(), rtol=0, atol=1e-15)


@pytest.mark.parametrize("sep", [";", "\t"])
def test_label_files_saved_by_spreadsheets_in_other_locales_are_read(tmp_path, sep):
    """Semicolon or tab separated, lower-case or spaced header names: the same table as the study's format."""
    gt, sub = label_frames()
    for frame, name in ((gt, "gt.csv"), (sub, "probs.csv")):
        frame.rename(columns=lambda c: f" {c.lower()} ").to_csv(tmp_path / name, index=False, sep=sep)
    got = read_label_file(tmp_path / "probs.csv")
    assert got.columns.tolist() == ["ID", *LABELS]
    np.testing.assert_allclose(got[list(LABELS)].to_numpy(), sub[list(LABELS)].to_numpy(), rtol=0, atol=1e-15)
    check_submission(tmp_path / "probs.csv", tmp_path / "gt.csv")


def test_read_label_file_errors(tmp_path):
    gt, _ = label_frames()
    path = tmp_path / "gt.csv"
    gt.drop(columns=["H"]).to_csv(path, index=False)
    with pytest.raises(MetricsError, match=r"gt\.csv: missing column\(s\) H"):
        read_label_file(path)
    gt = gt.astype(object)
    gt.loc[2, "D"] = "yes"
    gt.to_csv(path, index=False)
    with pytest.raises(MetricsError, match=r"column D, row 4 .*'yes'"):
        read_label_file(path)
    with pytest.raises(MetricsError, match="no such file"):
        read_label_file(tmp_path / "absent.xlsx")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(MetricsError, match="unsupported file type"):
        read_label_file(tmp_path / "x.json")


def test_check_submission_accepts_matching_file(tmp_path):
    gt, sub = label_frames()
    sub.to_csv(tmp_path / "sub.csv", index=False)
    gt.to_excel(tmp_path / "gt.xlsx", index=False)
    check_submission(tmp_path / "sub.csv", tmp_path / "gt.xlsx")
    check_submission(sub, gt)


def test_check_submission_wrong_column_order():
    gt, sub = label_frames()
    with pytest.raises(SubmissionError, match="columns in the wrong order"):
        check_submission(sub[["ID", "D", "N", *LABELS[2:]]], gt)


def test_check_submission_wrong_row_order():
    gt, sub = label_frames()
    with pytest.raises(SubmissionError, match=r"rows in the wrong order \(row 2 has ID 3, the ground truth has 10\)"):
        check_submission(sub.iloc[[1, 0, 2, 3, 4, 5]], gt)


def test_check_submission_missing_ids():
    gt, sub = label_frames()
    with pytest.raises(SubmissionError, match=r"2 ground-truth ID\(s\) missing: 7, 42"):
        check_submission(sub.iloc[[0, 1, 4, 5]], gt)


def test_check_submission_extra_ids():
    gt, sub = label_frames()
    extra = pd.concat([sub, sub.iloc[[0]].assign(ID=999)])
    with pytest.raises(SubmissionError, match=r"1 ID\(s\) not in the ground truth: 999"):
        check_submission(extra, gt)


def test_check_submission_other_problems():
    gt, sub = label_frames()
    with pytest.raises(SubmissionError, match=r"missing column\(s\) O"):
        check_submission(sub.drop(columns=["O"]), gt)
    with pytest.raises(SubmissionError, match=r"unexpected column\(s\) score"):
        check_submission(sub.assign(score=1.0), gt)
    with pytest.raises(SubmissionError, match="appears more than once"):
        check_submission(pd.concat([sub, sub.iloc[[2]]]), gt)
    bad = sub.copy()
    bad.loc[1, "G"] = 1.2
    with pytest.raises(SubmissionError, match=r"not probabilities in \[0, 1\] at row 3 column G"):
        check_submission(bad, gt)
    bad.loc[1, "G"] = np.nan
    with pytest.raises(SubmissionError, match="column G, row 3"):
        check_submission(bad, gt)
