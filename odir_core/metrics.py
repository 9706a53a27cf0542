"""ODIR-5K evaluation: the study's metrics, the official ODIR-2019 metrics, per-label table, submission check.

Two metric sets, each ``dict(kappa, f1, auc, final)`` with ``final`` the mean of the three:

* :func:`study_metrics` -- the original study's validation metrics: mean over labels of each
  label's Cohen kappa, F1 with ``average='weighted'`` and ROC AUC with ``average='weighted'``.
* :func:`challenge_metrics` -- the ODIR-2019 challenge's official evaluation
  (``ODIR_evaluation.py`` by Shanggong Medical Technology, July 2019, function ``ODIR_Metrics``)::

      gt = gt_data.flatten(); pr = pr_data.flatten()
      kappa = metrics.cohen_kappa_score(gt, pr > th)
      f1 = metrics.f1_score(gt, pr > th, average='micro')
      auc = metrics.roc_auc_score(gt, pr)
      final_score = (kappa + f1 + auc) / 3.0      # th = 0.5

  and its submission check (``importPR``): disordered columns, disordered rows and missing
  results are each rejected with their own error; :func:`check_submission` does the same.

A probability counts as positive when it is strictly above the threshold (``pr > th``), as in the
official script; both metric sets use this rule.

Degenerate input. Bad arrays (shape mismatch, labels not 0/1, NaN/inf or out-of-[0, 1]
probabilities, no rows) raise :class:`MetricsError` naming what is wrong and where. A score that is
mathematically undefined for a label -- ROC AUC when that label's ground truth has one class only,
Cohen kappa when truth and prediction are both constant -- is NaN for that label, a
:class:`MetricsWarning` names the labels, and averages over labels are taken over the labels where
the score is defined (NaN if there is none). ``final`` is NaN when one of its parts is NaN.
"""

from __future__ import annotations

import argparse
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import (
    cohen_kappa_score,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from odir_core.errors import InputError, run_cli
from odir_core.labels import LABELS, NUM_LABELS
from odir_core.table_headers import csv_delimiter, header_key

ID_COLUMN = "ID"
LABEL_FILE_COLUMNS = [ID_COLUMN, *LABELS]
AVERAGE_ROWS = ("micro avg", "macro avg", "weighted avg")


class MetricsError(InputError):
    """Ground truth or probabilities that cannot be scored."""


class SubmissionError(MetricsError):
    """A submission file that does not match its ground truth (columns, rows, IDs)."""


class MetricsWarning(UserWarning):
    """A score that is undefined for some labels and was set to NaN."""


# ---------------------------------------------------------------------------------------------
# input validation
# ---------------------------------------------------------------------------------------------


def _as_matrix(values, what: str) -> np.ndarray:
    """(n, 8) float64 array from an array-like or a DataFrame holding the label columns."""
    if isinstance(values, pd.DataFrame) and set(LABELS) <= set(values.columns):
        values = values[list(LABELS)]
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise MetricsError(f"{what} is not numeric: {exc}") from None
    if arr.ndim != 2 or arr.shape[1] != NUM_LABELS:
        raise MetricsError(f"{what} must have shape (n, {NUM_LABELS}) in label order {''.join(LABELS)}, got {arr.shape}")
    if arr.shape[0] == 0:
        raise MetricsError(f"{what} has no rows")
    return arr


def _where(mask: np.ndarray, limit: int = 5, first_row: int = 0) -> str:
    """'row 3 column D, row 10 column O, ...' for the first True cells of an (n, 8) mask."""
    rows, cols = np.nonzero(mask)
    cells = [f"row {r + first_row} column {LABELS[c]}" for r, c in zip(rows[:limit], cols[:limit])]
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return ", ".join(cells) + more


def _validate(y_true, y_prob) -> tuple[np.ndarray, np.ndarray]:
    """Checked (y_true int64, y_prob float64), both (n, 8); raises MetricsError otherwise."""
    yt = _as_matrix(y_true, "y_true")
    yp = _as_matrix(y_prob, "y_prob")
    if yt.shape != yp.shape:
        raise MetricsError(f"y_true has shape {yt.shape} but y_prob has shape {yp.shape}; they must match row for row")
    bad = ~np.isin(yt, (0.0, 1.0))
    if bad.any():
        raise MetricsError(f"y_true must hold only 0 and 1; {int(bad.sum())} other value(s) at {_where(bad)}")
    bad = ~np.isfinite(yp)
    if bad.any():
        raise MetricsError(f"y_prob has {int(bad.sum())} NaN/inf value(s) at {_where(bad)}; fix the model output before scoring")
    bad = (yp < 0.0) | (yp > 1.0)
    if bad.any():
        raise MetricsError(
            f"y_prob must be probabilities in [0, 1]; {int(bad.sum())} value(s) outside at {_where(bad)}"
            " (apply a sigmoid to logits first)"
        )
    return yt.astype(np.int64), yp


def _thresholds(threshold) -> np.ndarray:
    """(8,) thresholds from a scalar or a per-label sequence, each in [0, 1]."""
    try:
        t = np.broadcast_to(np.asarray(threshold, dtype=np.float64), (NUM_LABELS,))
    except ValueError:
        raise MetricsError(f"threshold must be a number or {NUM_LABELS} numbers (one per label), got {threshold!r}") from None
    if not np.all((t >= 0.0) & (t <= 1.0)):
        raise MetricsError(f"threshold must lie in [0, 1], got {t.tolist()}")
    return t


def binarize(y_prob, threshold=0.5) -> np.ndarray:
    """0/1 int64 predictions: probability strictly above the (scalar or per-label) threshold."""
    return (np.asarray(y_prob, dtype=np.float64) > _thresholds(threshold)).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# scores
# ---------------------------------------------------------------------------------------------


def _warn_undefined(score: str, labels: list[str], reason: str) -> None:
    """A MetricsWarning attributed to the first caller outside this module (whichever function was called)."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_globals.get("__name__") == __name__:
        frame, level = frame.f_back, level + 1
    warnings.warn(f"{score} is undefined for label(s) {', '.join(labels)} ({reason}); set to NaN", MetricsWarning,
                  stacklevel=level)


def _kappa(t: np.ndarray, p: np.ndarray) -> float:
    """Cohen kappa, NaN (without sklearn's own warning) when truth and prediction are both constant."""
    if np.unique(t).size == 1 and np.unique(p).size == 1:
        return math.nan
    return float(cohen_kappa_score(t, p))


def per_label_kappa(y_true, y_prob, threshold=0.5) -> np.ndarray:
    """(8,) Cohen kappa of each label at the threshold; NaN (with a MetricsWarning) where undefined."""
    yt, yp = _validate(y_true, y_prob)
    pred = binarize(yp, threshold)
    kappas = np.array([_kappa(yt[:, j], pred[:, j]) for j in range(NUM_LABELS)])
    undefined = [LABELS[j] for j in np.flatnonzero(np.isnan(kappas))]
    if undefined:
        _warn_undefined("Cohen kappa", undefined, "ground truth and prediction both constant")
    return kappas


def per_label_auc(y_true, y_prob) -> np.ndarray:
    """(8,) ROC AUC of each label; NaN (with a MetricsWarning) where the truth has one class only."""
    yt, yp = _validate(y_true, y_prob)
    defined = np.array([np.unique(yt[:, j]).size == 2 for j in range(NUM_LABELS)])
    aucs = np.full(NUM_LABELS, math.nan)
    for j in np.flatnonzero(defined):
        aucs[j] = roc_auc_score(yt[:, j], yp[:, j])
    if not defined.all():
        _warn_undefined("ROC AUC", [LABELS[j] for j in np.flatnonzero(~defined)], "only one class in the ground truth")
    return aucs


def _nanmean(values: np.ndarray, weights: np.ndarray | None = None) -> float:
    ok = ~np.isnan(values)
    if weights is not None:
        ok &= weights > 0
    if not ok.any():
        return math.nan
    return float(np.average(values[ok], weights=None if weights is None else weights[ok]))


def _with_final(kappa: float, f1: float, auc: float) -> dict[str, float]:
    return {"kappa": kappa, "f1": f1, "auc": auc, "final": (kappa + f1 + auc) / 3.0}


def study_metrics(y_true, y_prob, threshold=0.5) -> dict[str, float]:
    """The study's metrics: mean per-label Cohen kappa, weighted F1, weighted ROC AUC, final = their mean.

    F1 is ``f1_score(y_true, y_pred, average='weighted', zero_division=0)`` on the (n, 8) matrices
    and AUC ``roc_auc_score(y_true, y_prob, average='weighted')`` (weights = positives per label);
    a label whose AUC or kappa is undefined is left out of that average (see the module docstring).
    """
    yt, yp = _validate(y_true, y_prob)
    pred = binarize(yp, threshold)
    kappa = _nanmean(per_label_kappa(yt, yp, threshold))
    f1 = float(f1_score(yt, pred, average="weighted", zero_division=0))
    auc = _nanmean(per_label_auc(yt, yp), weights=yt.sum(axis=0).astype(np.float64))
    return _with_final(kappa, f1, auc)


def challenge_metrics(y_true, y_prob, threshold=0.5) -> dict[str, float]:
    """The official ODIR-2019 evaluation (``ODIR_Metrics``): kappa, micro F1 and ROC AUC of the flattened matrices.

    Flattening pools all 8 x n decisions into one binary problem; final = (kappa + f1 + auc) / 3.
    """
    yt, yp = _validate(y_true, y_prob)
    gt = yt.ravel()
    pr = yp.ravel()
    pred = binarize(yp, threshold).ravel()
    kappa = _kappa(gt, pred)
    if math.isnan(kappa):
        _warn_undefined("Cohen kappa", ["(all, flattened)"], "ground truth and prediction both constant")
    f1 = float(f1_score(gt, pred, average="micro"))
    if np.unique(gt).size == 2:
        auc = float(roc_auc_score(gt, pr))
    else:
        auc = math.nan
        _warn_undefined("ROC AUC", ["(all, flattened)"], "only one class in the ground truth")
    return _with_final(kappa, f1, auc)


def per_label_table(y_true, y_prob, threshold=0.5, *, averages: bool = False) -> pd.DataFrame:
    """Per-label precision, recall, F1, ROC AUC and support (positives), index LABELS.

    Precision/recall/F1 are scikit-learn's (``zero_division=0``), as in its classification report.
    With ``averages=True`` three rows follow: "micro avg", "macro avg", "weighted avg" (support = all
    positives); their AUC is the matching average of the per-label AUCs over labels where it is defined.
    """
    yt, yp = _validate(y_true, y_prob)
    pred = binarize(yp, threshold)
    precision, recall, f1, support = precision_recall_fscore_support(yt, pred, average=None, zero_division=0)
    aucs = per_label_auc(yt, yp)
    table = pd.DataFrame(
        {"precision": precision, "recall": recall, "f1": f1, "auc": aucs, "support": support.astype(np.int64)},
        index=pd.Index(LABELS, name="label"),
    )
    if not averages:
        return table
    rows = {}
    total = int(support.sum())
    for name in AVERAGE_ROWS:
        kind = name.split()[0]
        p, r, f, _ = precision_recall_fscore_support(yt, pred, average=kind, zero_division=0)
        if kind == "micro":
            gt = yt.ravel()
            auc = float(roc_auc_score(gt, yp.ravel())) if np.unique(gt).size == 2 else math.nan
        else:
            auc = _nanmean(aucs, weights=support.astype(np.float64) if kind == "weighted" else None)
        rows[name] = {"precision": p, "recall": r, "f1": f, "auc": auc, "support": total}
    return pd.concat([table, pd.DataFrame.from_dict(rows, orient="index")])


# ---------------------------------------------------------------------------------------------
# files and submissions
# ---------------------------------------------------------------------------------------------


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
        _check_values(sub, sub_name, binary=False)
    except MetricsError as exc:
        raise SubmissionError(str(exc)) from None


def _check_values(df: pd.DataFrame, where: str, *, binary: bool) -> None:
    """Raise MetricsError naming spreadsheet cells that are not 0/1 labels (binary) or probabilities."""
    values = _numeric_labels(df, where)[list(LABELS)].to_numpy()
    if binary:
        bad, wanted = ~np.isin(values, (0.0, 1.0)), "0/1 labels"
    else:
        bad, wanted = ~np.isfinite(values) | (values < 0.0) | (values > 1.0), "probabilities in [0, 1]"
    if bad.any():
        raise MetricsError(f"{where}: {int(bad.sum())} value(s) are not {wanted} at {_where(bad, first_row=2)} (spreadsheet rows)")


def align_submission(submission: pd.DataFrame, ground_truth: pd.DataFrame) -> pd.DataFrame:
    """The submission's rows and columns reordered to the ground truth's ID order (same IDs required)."""
    sub = _normalise_ids(submission, "submission")
    missing = sorted(set(ground_truth[ID_COLUMN]) - set(sub[ID_COLUMN]))
    extra = sorted(set(sub[ID_COLUMN]) - set(ground_truth[ID_COLUMN]))
    if missing or extra:
        raise SubmissionError(f"submission IDs differ from the ground truth: {len(missing)} missing ({_id_list(missing)}), {len(extra)} extra ({_id_list(extra)})")
    return sub.set_index(ID_COLUMN).loc[ground_truth[ID_COLUMN], list(LABELS)].reset_index()


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------


def format_report(y_true, y_prob, threshold=0.5) -> str:
    """Both metric sets and the per-label table as printable text."""
    study = study_metrics(y_true, y_prob, threshold)
    challenge = challenge_metrics(y_true, y_prob, threshold)
    t = _thresholds(threshold)
    shown = f"{t[0]:g}" if np.all(t == t[0]) else ",".join(f"{v:g}" for v in t)
    lines = [
        f"threshold {shown}, {len(y_true)} patients",
        "",
        f"{'':>8}{'study':>20}{'challenge':>20}",
    ]
    for key in ("kappa", "f1", "auc", "final"):
        lines.append(f"{key:>8}{study[key]:>20.16f}{challenge[key]:>20.16f}")
    lines += [
        "",
        "study: mean per-label kappa, weighted F1, weighted ROC AUC; challenge: official ODIR-2019 (flattened, micro F1)",
        "",
    ]
    table = per_label_table(y_true, y_prob, threshold, averages=True)
    lines.append(f"{'':>12}{'precision':>10}{'recall':>10}{'f1':>10}{'auc':>10}{'support':>10}")
    for name, row in table.iterrows():
        if name == AVERAGE_ROWS[0]:
            lines.append("")
        lines.append(
            f"{name:>12}{row.precision:>10.2f}{row.recall:>10.2f}{row.f1:>10.2f}{row.auc:>10.2f}{int(row.support):>10d}"
        )
    return "\n".join(lines)


def _parse_threshold(text: str):
    try:
        parts = [float(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or a comma-separated list of {NUM_LABELS} numbers") from None
    return parts[0] if len(parts) == 1 else parts


NAME = "odir_core.metrics"  # the command (python -m odir_core.metrics) in its error and warning lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m odir_core.metrics",
        description="Score ODIR-5K probabilities against ground truth with the study's metrics and the official "
        "ODIR-2019 metrics, and print a per-label table.",
    )
    parser.add_argument("ground_truth", help="ground-truth labels, .xlsx or .csv with columns ID,N,D,G,C,A,H,M,O (0/1)")
    parser.add_argument("probs", help="predicted probabilities, .xlsx or .csv with columns ID,N,D,G,C,A,H,M,O in the ground truth's row order")
    parser.add_argument(
        "--threshold",
        type=_parse_threshold,
        default=0.5,
        help="decision threshold: one number for all labels or 8 comma-separated numbers in N..O order; "
        "a probability strictly above it counts as positive (default 0.5, as the official evaluation)",
    )
    parser.add_argument(
        "--align",
        action="store_true",
        help="reorder the probabilities' rows and columns to the ground truth instead of rejecting a file in another "
        "order (missing or extra IDs are still errors)",
    )
    return parser


def main(argv=None) -> int:
    """Command-line entry point; returns 0, or 2 with one error line on bad input (see odir_core.errors)."""
    args = build_parser().parse_args(argv)
    return run_cli(_metrics_cli, args, prefix=f"{NAME}: error")


def _metrics_cli(args) -> int:
    gt = read_label_file(args.ground_truth)
    _check_values(gt, args.ground_truth, binary=True)
    if args.align:
        probs = read_label_file(args.probs)
        _check_values(probs, args.probs, binary=False)
        probs = align_submission(probs, gt)
    else:
        check_submission(args.probs, gt)
        probs = read_label_file(args.probs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MetricsWarning)
        text = format_report(gt[list(LABELS)], probs[list(LABELS)], args.threshold)
    for message in dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, MetricsWarning)):
        print(f"{NAME}: warning: {message}", file=sys.stderr)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
