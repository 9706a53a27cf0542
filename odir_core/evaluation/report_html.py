"""One self-contained HTML page of an evaluation: tables, figures embedded as base64 PNG, the text report."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import pandas as pd

from odir_core.labels import LABEL_NAMES, LABELS

CAPTIONS = {
    "confusion_matrices": "Confusion matrix per label at threshold 0.5 (rows: truth, columns: prediction).",
    "roc_curves": "ROC curve per label; legend: area under the curve.",
    "pr_curves": "Precision-recall curve per label (steps); legend: average precision (AP) and prevalence.",
    "qualitative": "For each label, the first patient in split order who has it: both eyes, true and predicted labels, "
                   "probabilities; labels without such a patient are named under the title.",
}
STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:24px auto;max-width:1200px;color:#222;padding:0 16px}
h1{font-size:1.6em;margin-bottom:4px}h2{border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:32px}
table{border-collapse:collapse;margin:8px 0;font-size:0.92em}th,td{border:1px solid #ccc;padding:4px 10px;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}
.meta td{text-align:left}figure{margin:16px 0}figure img{max-width:100%;border:1px solid #ddd}
figcaption{color:#555;font-size:0.9em}pre{background:#f7f7f7;padding:12px;overflow-x:auto;font-size:0.85em}
.note{color:#555;font-size:0.9em}
"""


def _img_tag(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def _table(frame: pd.DataFrame) -> str:
    return frame.to_html(float_format=lambda v: f"{v:.4f}", border=0, na_rep="-", escape=True)


def metrics_frame(summary: dict) -> pd.DataFrame:
    """Rows: study / challenge metric sets at each threshold setting; columns kappa, f1, auc, final."""
    rows = {}
    for family in ("study", "challenge"):
        for setting, values in summary[family].items():
            rows[(family, setting.replace("at_", "threshold "))] = values
    frame = pd.DataFrame.from_dict(rows, orient="index")[["kappa", "f1", "auc", "final"]]
    frame.index = [f"{family}, {setting}" for family, setting in frame.index]
    return frame


def per_label_frame(summary: dict) -> pd.DataFrame:
    """Per-label precision/recall/F1 (+ AUC, support) with the threshold settings side by side."""
    blocks = {}
    for setting, table in summary["per_label"].items():
        frame = pd.DataFrame.from_dict(table, orient="index")
        cols = ["precision", "recall", "f1"]
        if setting != "at_0.5":
            frame.insert(0, "threshold", [summary["thresholds"][setting][label] for label in frame.index])
            cols = ["threshold", *cols]
        blocks[setting.replace("at_", "threshold ")] = frame[cols]
    first = pd.DataFrame.from_dict(summary["per_label"]["at_0.5"], orient="index")
    blocks["all thresholds"] = first[["auc", "support"]]
    out = pd.concat(blocks, axis=1)
    out.index = [f"{label} {LABEL_NAMES[label]}" for label in LABELS]
    return out


def members_frame(summary: dict) -> pd.DataFrame:
    """An ensemble's rows: each member's study and challenge final (and study kappa, F1, AUC) at threshold 0.5,
    then the ensemble's."""
    rows = {}
    for i, member in enumerate(summary["members"]):
        rows[f"member {i + 1}: {member['model']}"] = {**member["study"], "challenge final": member["challenge"]["final"]}
    at = "at_0.5"
    rows["ensemble"] = {**summary["study"][at], "challenge final": summary["challenge"][at]["final"]}
    return pd.DataFrame.from_dict(rows, orient="index")[["kappa", "f1", "auc", "final", "challenge final"]]


def render_report(summary: dict, report_text: str, figures: dict, files: list[str]) -> str:
    """The HTML page: what was evaluated, metrics, per-label table, figures (name -> PNG path, embedded),
    classification report, and links to ``files`` (names in the same folder)."""
    info = summary.get("info", {})
    meta_rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in info.items()
    )
    positives = ", ".join(f"{label} {n}" for label, n in summary["positives"].items())
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>ODIR-5K evaluation: {html.escape(str(info.get('title', '')))}</title><style>{STYLE}</style></head><body>",
        f"<h1>ODIR-5K evaluation{': ' + html.escape(str(info['title'])) if info.get('title') else ''}</h1>",
        f"<p>{summary['n_patients']} patients; positives per label: {html.escape(positives)}.</p>",
        f"<table class='meta'>{meta_rows}</table>" if meta_rows else "",
        "<h2>Metrics</h2>",
        "<p class='note'>study: mean per-label Cohen kappa, weighted F1, weighted ROC AUC, final = their mean. "
        "challenge (ODIR-2019): kappa, micro F1 and ROC AUC on the flattened label matrix, final = their mean.</p>",
        _table(metrics_frame(summary)),
        ("<h2>Ensemble members</h2><p class='note'>Each member alone and the ensemble, at threshold 0.5 (study "
         "scores; challenge final).</p>" + _table(members_frame(summary))) if summary.get("members") else "",
        "".join(f"<p class='note'>Note: {html.escape(w)}.</p>" for w in summary.get("warnings", [])),
        "<h2>Per label</h2>",
        "<p class='note'>precision, recall and F1 at threshold 0.5"
        + (" and at the tuned per-label thresholds" if "at_tuned" in summary["per_label"] else "")
        + "; ROC AUC does not depend on the threshold.</p>",
        _table(per_label_frame(summary)),
        "<h2>Figures</h2>",
    ]
    for name, path in figures.items():
        parts.append(f"<figure>{_img_tag(path, name)}<figcaption>{html.escape(CAPTIONS.get(name, name))}</figcaption></figure>")
    if "qualitative" not in figures:
        parts.append("<p class='note'>No qualitative figure: no patient images were available (pass --images or --data).</p>")
    parts.append(f"<h2>Classification report</h2><pre>{html.escape(report_text)}</pre>")
    links = " ".join(f"<a href='{html.escape(f)}'>{html.escape(f)}</a>" for f in files)
    parts.append(f"<h2>Files</h2><p>{links}</p></body></html>\n")
    return "\n".join(parts)
