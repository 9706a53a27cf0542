"""ODIR-5K label and probability files, and the official submission check.

A labels or probabilities file is a csv (comma, semicolon or tab separated) or xlsx table with columns
``ID,N,D,G,C,A,H,M,O`` as the study wrote them: :func:`read_label_file` reads one, :func:`check_values`
checks its cells. :func:`check_submission` checks a submission against its ground truth as the ODIR-2019
challenge's official evaluation does (``importPR`` of ``ODIR_evaluation.py``): disordered columns,
disordered rows and missing results are each rejected with their own error; :func:`align_submission`
reorders a submission to its ground truth instead. The scores themselves are :mod:`odir_core.scores`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from odir_core.labels import LABELS
from odir_core.scores import MetricsError, name_cells
from odir_core.table_headers import csv_delimiter, header_key

ID_COLUMN = "ID"
LABEL_FILE_COLUMNS = [ID_COLUMN, *LABELS]


class SubmissionError(MetricsError):
    """A submission file that does not match its ground truth (columns, rows, IDs)."""


def _read_table(path) -> pd.DataFrame:
    """A csv (comma, semicolon or tab separated) or xlsx file as read by pandas, header cells that name
    ID,N..O up to case, spaces, dashes and underscores renamed so; clear errors for missing or unreadable files."""
    path = Path(path)
    if not path.is_file():
        raise MetricsError(f"{path}: no such file")
    suffix = path.suffix.lower()
    names = {header_key(column): column for column in LABEL_FILE_COLUMNS}
    try:
        if suffix == ".csv":
            return pd.read_csv(path, sep=csv_delimiter(path)).rename(columns=lambda c: names.get(header_key(c), c))
        if suffix in (".xlsx", ".xlsm"):
            return pd.read_excel(path, engine="openpyxl").rename(columns=lambda c: names.get(header_key(c), c))
    except Exception as exc:  # pandas raises many types for a corrupt file
        raise MetricsError(f"{path}: cannot be read as {suffix[1:]}: {exc}") from None
    raise MetricsError(f"{path}: unsupported file type {path.suffix!r}; use .csv or .xlsx with columns {','.join(LABEL_FILE_COLUMNS)}")


def _shown(value) -> str:
    """A cell's value as a message shows it: text quoted, a number as written (1e+30, nan)."""
    return repr(value) if isinstance(value, str) else repr(float(value)) if isinstance(value, float) else str(value)


def _normalise_ids(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """ID column as int64; raises MetricsError for missing, non-integer or duplicate IDs."""
    ids = pd.to_numeric(df[ID_COLUMN], errors="coerce").astype(np.float64)
    bad = ids.isna() | (ids != ids.round()) | (ids.abs() >= 2.0**63)  # int64 holds the IDs
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise MetricsError(f"{where}: column ID, row {row + 2} (spreadsheet row): {_shown(df[ID_COLUMN].iloc[row])} is "
                           "not an integer patient ID from -2**63 to 2**63 - 1")
    df = df.copy()
    df[ID_COLUMN] = ids.astype(np.int64)
    dup = df[ID_COLUMN].duplicated()
    if dup.any():
        row = int(np.flatnonzero(dup.to_numpy())[0])
        raise MetricsError(f"{where}: column ID, row {row + 2}: patient ID {df[ID_COLUMN].iloc[row]} appears more than once")
    return df


def _as_frame(table, what: str) -> tuple[pd.DataFrame, str]:
    if isinstance(table, pd.DataFrame):
        return table, what
    return _read_table(table), str(table)


def read_label_file(path) -> pd.DataFrame:
    """Read a labels or probabilities file (csv or xlsx, columns ID,N,D,G,C,A,H,M,O as the study wrote them).

    Columns are returned in that order with a RangeIndex; other columns (e.g. the annotation
    file's age, sex, file names) are dropped. Raises MetricsError naming the file and what is missing.
    """
    df = _read_table(path)
    missing = [c for c in LABEL_FILE_COLUMNS if c not in df.columns]
    if missing:
        raise MetricsError(
            f"{path}: missing column(s) {', '.join(missing)}; expected {','.join(LABEL_FILE_COLUMNS)}, found {','.join(map(str, df.columns))}"
        )
    return _numeric_labels(_normalise_ids(df[LABEL_FILE_COLUMNS], str(path)), str(path)).reset_index(drop=True)


def _numeric_labels(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """Label columns as float64; raises MetricsError naming the first empty or non-numeric cell."""
    df = df.copy()
    for label in LABELS:
        values = pd.to_numeric(df[label], errors="coerce")
        if values.isna().any():
            row = int(np.flatnonzero(values.isna().to_numpy())[0])
            raise MetricsError(f"{where}: column {label}, row {row + 2} (spreadsheet row): {_shown(df[label].iloc[row])} is "
                               "empty or not a number")
        df[label] = values.astype(np.float64)
    return df


def _id_list(ids, limit: int = 5) -> str:
    ids = list(ids)
    more = f" and {len(ids) - limit} more" if len(ids) > limit else ""
    return ", ".join(str(i) for i in ids[:limit]) + more


def check_submission(submission, ground_truth) -> None:
    """Check a submission (path or DataFrame, columns ID,N..O) against its ground truth like the official script.

    Raises SubmissionError, each case with its own message: missing/unknown columns, columns out of
    order, non-integer or duplicate IDs, missing IDs, extra IDs, rows out of the ground truth's order,
    and probabilities that are NaN/inf or outside [0, 1].
    """
    sub, sub_name = _as_frame(submission, "submission")
    gt, gt_name = _as_frame(ground_truth, "ground truth")
    try:
        gt = _normalise_ids(gt, gt_name) if ID_COLUMN in gt.columns else gt
    except MetricsError as exc:
        raise SubmissionError(str(exc)) from None
    if ID_COLUMN not in gt.columns:
        raise SubmissionError(f"{gt_name}: no ID column; expected columns {','.join(LABEL_FILE_COLUMNS)}")

    columns = [str(c) for c in sub.columns]
    missing = [c for c in LABEL_FILE_COLUMNS if c not in columns]
    if missing:
        raise SubmissionError(f"{sub_name}: missing column(s) {', '.join(missing)}; the header must be {','.join(LABEL_FILE_COLUMNS)}")
    extra = [c for c in columns if c not in LABEL_FILE_COLUMNS]
    if extra:
        raise SubmissionError(f"{sub_name}: unexpected column(s) {', '.join(extra)}; the header must be exactly {','.join(LABEL_FILE_COLUMNS)}")
    if columns != LABEL_FILE_COLUMNS:
        raise SubmissionError(f"{sub_name}: columns in the wrong order ({','.join(columns)}); the header must be {','.join(LABEL_FILE_COLUMNS)}")

    try:
        sub = _normalise_ids(sub, sub_name)
    except MetricsError as exc:
        raise SubmissionError(str(exc)) from None
    sub_ids, gt_ids = sub[ID_COLUMN].tolist(), gt[ID_COLUMN].tolist()
    missing_ids = sorted(set(gt_ids) - set(sub_ids))
    if missing_ids:
        raise SubmissionError(f"{sub_name}: incomplete submission, {len(missing_ids)} ground-truth ID(s) missing: {_id_list(missing_ids)}")
    known = set(gt_ids)
    extra_ids = [i for i in sub_ids if i not in known]
    if extra_ids:
        raise SubmissionError(f"{sub_name}: {len(extra_ids)} ID(s) not in the ground truth: {_id_list(extra_ids)}")
    if sub_ids != gt_ids:
        first = next(k for k, (a, b) in enumerate(zip(sub_ids, gt_ids)) if a != b)
        raise SubmissionError(
            f"{sub_name}: rows in the wrong order (row {first + 2} has ID {sub_ids[first]}, the ground truth has {gt_ids[first]});"
            " sort the rows in the ground truth's ID order"
        )
    try:
        check_values(sub, sub_name, binary=False)
    except MetricsError as exc:
        raise SubmissionError(str(exc)) from None


def check_values(df: pd.DataFrame, where: str, *, binary: bool) -> None:
    """Raise MetricsError naming spreadsheet cells that are not 0/1 labels (binary) or probabilities."""
    values = _numeric_labels(df, where)[list(LABELS)].to_numpy()
    if binary:
        bad, wanted = ~np.isin(values, (0.0, 1.0)), "0/1 labels"
    else:
        bad, wanted = ~np.isfinite(values) | (values < 0.0) | (values > 1.0), "probabilities in [0, 1]"
    if bad.any():
        raise MetricsError(f"{where}: {int(bad.sum())} value(s) are not {wanted} at {name_cells(bad, first_row=2)} (spreadsheet rows)")


def align_submission(submission: pd.DataFrame, ground_truth: pd.DataFrame) -> pd.DataFrame:
    """The submission's rows and columns reordered to the ground truth's ID order (same IDs required)."""
    sub = _normalise_ids(submission, "submission")
    missing = sorted(set(ground_truth[ID_COLUMN]) - set(sub[ID_COLUMN]))
    extra = sorted(set(sub[ID_COLUMN]) - set(ground_truth[ID_COLUMN]))
    if missing or extra:
        raise SubmissionError(f"submission IDs differ from the ground truth: {len(missing)} missing ({_id_list(missing)}), {len(extra)} extra ({_id_list(extra)})")
    return sub.set_index(ID_COLUMN).loc[ground_truth[ID_COLUMN], list(LABELS)].reset_index()
