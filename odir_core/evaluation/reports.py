"""The evaluation folder: the study's probs/ground-truth files, a challenge submission, metrics,
classification report, figures and one HTML page, written together and atomically.

Folder contents (see write_evaluation):
probs.xlsx, ground_truth.xlsx   ID + N..O in split order (the study's format, sheet "Sheet1")
submission.csv                  ID,N,D,G,C,A,H,M,O probabilities (the ODIR-2019 challenge format)
metrics.json                    study and challenge metrics and per-label table, at 0.5 and tuned thresholds
classification_report.txt       scikit-learn's classification report (zero_division=0)
confusion_matrices.png, roc_curves.png, pr_curves.png, qualitative.png, report.html
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import classification_report

from odir_core import scores
from odir_core.atomic import atomic_folder, atomic_path, atomic_write_text
from odir_core.errors import InputError, writing
from odir_core.evaluation import plots
from odir_core.evaluation.report_html import render_report
from odir_core.evaluation.thresholds import DEFAULT_THRESHOLD, as_thresholds
from odir_core.labels import LABEL_NAMES, LABELS, NUM_LABELS
from odir_core.scores import binarize
from odir_core.spreadsheets import write_xlsx

COLUMNS = ["ID", *LABELS]
FILES = {
    "probs": "probs.xlsx",
    "ground_truth": "ground_truth.xlsx",
    "submission": "submission.csv",
    "metrics": "metrics.json",
    "classification_report": "classification_report.txt",
    "confusion_matrices": "confusion_matrices.png",
    "roc_curves": "roc_curves.png",
    "pr_curves": "pr_curves.png",
    "qualitative": "qualitative.png",
    "report": "report.html",
}
AT_DEFAULT = "at_0.5"
AT_TUNED = "at_tuned"


class ReportError(InputError):
    """Inputs of a report that do not fit together (shapes, IDs, values)."""


def label_frame(ids: Sequence[int], values) -> pd.DataFrame:
    """DataFrame with columns ID, N..O (the study's probs/ground-truth layout), rows in the given order."""
    values = np.asarray(values)
    if values.ndim != 2 or values.shape[1] != NUM_LABELS or len(ids) != len(values):
        raise ReportError(f"need {len(ids)} rows of {NUM_LABELS} values, got shape {values.shape}")
    frame = pd.DataFrame(values, columns=list(LABELS))
    frame.insert(0, "ID", np.asarray(ids, dtype=np.int64))
    return frame


def write_label_xlsx(path, ids: Sequence[int], values) -> Path:
    """Write ID + N..O to an xlsx file in the study's format (no index column), atomically."""
    with atomic_path(path) as tmp:
        write_xlsx(label_frame(ids, values), tmp, index=False, sheet_name="Sheet1")
    return Path(path)


def write_submission_csv(path, ids: Sequence[int], probs) -> Path:
    """Write an ODIR-2019 challenge submission: header ID,N,D,G,C,A,H,M,O, one row per patient."""
    with atomic_path(path) as tmp:
        label_frame(ids, np.asarray(probs, dtype=np.float64)).to_csv(tmp, index=False, float_format="%.9g")
    return Path(path)


def check_inputs(ids, y_true, y_prob, sources=("ground truth", "probabilities")) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate IDs, 0/1 labels and probabilities; return them as arrays (int64, int64, float64).

    ``sources`` (where the labels and the probabilities come from, e.g. file names) start the error
    naming the first bad value's patient and label."""
    ids = np.asarray(ids)
    y_true = np.asarray(y_true)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    if y_true.shape != y_prob.shape or y_prob.ndim != 2 or y_prob.shape[1] != NUM_LABELS or len(ids) != len(y_prob):
        raise ReportError(
            f"need {len(ids)} IDs with (n, {NUM_LABELS}) labels and probabilities, got {y_true.shape} and {y_prob.shape}"
        )
    if len(ids) == 0:
        raise ReportError("no patients to evaluate")
    duplicated = pd.Index(ids)[pd.Index(ids).duplicated()].unique().tolist()
    if duplicated:
        raise ReportError(f"duplicate patient IDs: {duplicated[:10]}")
    _check_cells(sources[0], ids, y_true, np.isin(y_true, (0, 1)), "a ground-truth label (0 or 1)", "fix the ground truth")
    _check_cells(sources[1], ids, y_prob, (y_prob >= 0) & (y_prob <= 1), "a probability in [0, 1]",  # NaN fails both
                 "fix the probabilities (a model's sigmoid outputs)")
    return ids.astype(np.int64), y_true.astype(np.int64), y_prob


def _check_cells(source: str, ids, values: np.ndarray, good: np.ndarray, what: str, fix: str) -> None:
    """Raise ReportError naming ``source`` and the first cell (patient ID, label) where ``good`` is False."""
    bad = np.argwhere(~good)
    if len(bad):
        row, col = bad[0]
        more = f" ({len(bad) - 1} more such value(s))" if len(bad) > 1 else ""
        raise ReportError(f"{source}: patient {ids[row]}, label {LABELS[col]}: {float(values[row, col])} is not {what}"
                          f"{more}; {fix}")


def _number(value):
    """JSON-safe float: NaN (an undefined score) becomes None."""
    value = float(value)
    return None if math.isnan(value) else value


def _per_label(y_true, y_prob, thresholds) -> dict:
    table = scores.per_label_table(y_true, y_prob, threshold=thresholds)
    return {label: {k: (int(v) if k == "support" else _number(v)) for k, v in row.items()} for label, row in table.iterrows()}


def summarize(y_true, y_prob, tuned=None) -> dict:
    """Study and challenge metrics and the per-label table at 0.5, and at ``tuned`` thresholds when given.

    Undefined scores (odir_core.scores' NaN) are None; their warnings are listed under "warnings".
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", scores.MetricsWarning)
        summary = _summarize(y_true, y_prob, tuned)
    summary["warnings"] = list(dict.fromkeys(str(w.message) for w in caught if issubclass(w.category, scores.MetricsWarning)))
    return summary


def _summarize(y_true, y_prob, tuned) -> dict:
    settings = {AT_DEFAULT: as_thresholds(DEFAULT_THRESHOLD)}
    if tuned is not None:
        settings[AT_TUNED] = as_thresholds(tuned)
    summary = {"n_patients": len(y_true), "labels": list(LABELS), "positives": dict(zip(LABELS, map(int, y_true.sum(0))))}
    summary["thresholds"] = {name: dict(zip(LABELS, map(float, t))) for name, t in settings.items()}
    for name, fn in (("study", scores.study_metrics), ("challenge", scores.challenge_metrics)):
        summary[name] = {key: {k: _number(v) for k, v in fn(y_true, y_prob, threshold=t).items()} for key, t in settings.items()}
    summary["per_label"] = {key: _per_label(y_true, y_prob, t) for key, t in settings.items()}
    return summary


def classification_report_text(y_true, y_prob, tuned=None) -> str:
    """scikit-learn's classification report (target_names = labels, zero_division=0) at 0.5 [and tuned]."""
    parts = []
    for name, t in (("threshold 0.5", DEFAULT_THRESHOLD), ("tuned thresholds", tuned)):
        if t is None:
            continue
        text = classification_report(y_true, binarize(y_prob, t), target_names=list(LABELS), zero_division=0)
        header = f"Classification report, {name}"
        if name != "threshold 0.5":
            header += " (" + ", ".join(f"{label} {v:.2f}" for label, v in zip(LABELS, as_thresholds(t))) + ")"
        parts.append(f"{header}\n\n{text}")
    return "\n\n".join(parts)


def pick_examples(ids, y_true, y_prob, load_pair: Callable | None) -> list[dict]:
    """For each label, the first patient (in split order) who has it and whose two images load.

    ``load_pair(id)`` returns (left, right) uint8 RGB arrays, or None when the patient has no images.
    A patient is shown once at most; labels without an available patient are left out.
    """
    if load_pair is None:
        return []
    examples, used, cache = [], set(), {}
    for j, label in enumerate(LABELS):
        for i in np.flatnonzero(y_true[:, j]):
            pid = int(ids[i])
            if pid in used:
                continue
            if pid not in cache:
                cache[pid] = load_pair(pid)
            if cache[pid] is None:
                continue
            used.add(pid)
            left, right = cache[pid]
            examples.append({"label": label, "id": pid, "left": left, "right": right, "truth": y_true[i], "prob": y_prob[i]})
            break
    return examples


def missing_examples(ids, y_true, examples: list[dict]) -> list[str]:
    """One line per label without an example of its own in ``examples`` (pick_examples): no patient has
    it, its patients are shown for another label, or none of their images could be read."""
    ids, y_true = np.asarray(ids), np.asarray(y_true)
    own = {e["label"] for e in examples}
    shown = {e["id"] for e in examples}
    notes = []
    for j, label in enumerate(LABELS):
        if label in own:
            continue
        name = f"{label} ({LABEL_NAMES[label]})"
        having = [int(i) for i in ids[y_true[:, j] == 1]]
        if not having:
            notes.append(f"no patient with label {name} in this set")
        elif shown.intersection(having):
            notes.append(f"label {name}: see patient {', '.join(map(str, sorted(shown.intersection(having))))} above")
        else:
            notes.append(f"label {name}: the images of its {len(having)} patient(s) could not be read")
    return notes


def write_evaluation(
    out_dir,
    ids,
    y_true,
    y_prob,
    *,
    tuned=None,
    load_pair: Callable | None = None,
    info: dict | None = None,
    after: Callable[[Path], None] | None = None,
    caption: str = "",
    members: list[dict] | None = None,
) -> Path:
    """Write the whole evaluation folder ``out_dir`` (must not exist yet) and return its path.

    ``tuned``: per-label thresholds reported beside 0.5; ``load_pair``: see pick_examples;
    ``info``: what was evaluated (model, data, split, TTA, threshold source...), shown in the report;
    ``after(folder)``: writes extra files into the (still temporary) folder; ``caption``: a line under
    every figure (what the model was trained on); ``members``: an ensemble's members' scores
    (``odir_core.evaluation.ensemble.member_scores``), shown beside the ensemble's.
    Everything is written to a temporary folder renamed to ``out_dir`` at the end.
    """
    ids, y_true, y_prob = check_inputs(ids, y_true, y_prob)
    info = dict(info or {})
    summary = summarize(y_true, y_prob, tuned)
    summary["info"] = info
    if members:
        summary["members"] = members
    report_text = classification_report_text(y_true, y_prob, tuned)
    examples = pick_examples(ids, y_true, y_prob, load_pair)
    qualitative_thresholds = tuned if tuned is not None else DEFAULT_THRESHOLD
    with writing(out_dir), atomic_folder(out_dir) as tmp:  # an OSError from here on is a failed write (OutputError)
        write_label_xlsx(tmp / FILES["probs"], ids, y_prob)
        write_label_xlsx(tmp / FILES["ground_truth"], ids, y_true)
        write_submission_csv(tmp / FILES["submission"], ids, y_prob)
        atomic_write_text(tmp / FILES["metrics"], json.dumps(summary, indent=2) + "\n")
        atomic_write_text(tmp / FILES["classification_report"], report_text + "\n")
        plots.save_figure(plots.confusion_matrices_figure(y_true, y_prob, DEFAULT_THRESHOLD), tmp / FILES["confusion_matrices"],
                          caption=caption)
        plots.save_figure(plots.roc_curves_figure(y_true, y_prob), tmp / FILES["roc_curves"], caption=caption)
        plots.save_figure(plots.pr_curves_figure(y_true, y_prob), tmp / FILES["pr_curves"], caption=caption)
        figures = ["confusion_matrices", "roc_curves", "pr_curves"]
        if examples:
            title = "Predicted at the " + ("tuned per-label thresholds" if tuned is not None else "threshold 0.5")
            notes = missing_examples(ids, y_true, examples)
            plots.save_figure(plots.qualitative_figure(examples, qualitative_thresholds, title, notes), tmp / FILES["qualitative"],
                              caption=caption)
            figures.append("qualitative")
        if after is not None:
            after(tmp)
        data_files = sorted(p.name for p in tmp.iterdir() if p.suffix not in (".png", ".html") and not p.name.startswith("."))
        html = render_report(summary, report_text, {name: tmp / FILES[name] for name in figures}, files=data_files)
        atomic_write_text(tmp / FILES["report"], html)
    return Path(out_dir)
