"""Figures of an evaluation and of a prediction (matplotlib, Agg backend), saved atomically as PNG."""

from __future__ import annotations

import textwrap

import matplotlib

matplotlib.use("Agg")

import cv2  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import (  # noqa: E402
    ConfusionMatrixDisplay,
    average_precision_score,
    multilabel_confusion_matrix,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from odir_core.atomic import atomic_path  # noqa: E402
from odir_core.evaluation.thresholds import as_thresholds  # noqa: E402
from odir_core.labels import LABEL_NAMES, LABELS  # noqa: E402
from odir_core.scores import binarize  # noqa: E402

# One colour per label, the same in every figure.
LABEL_COLORS = dict(zip(LABELS, plt.get_cmap("tab10").colors))
CAPTION_SIZE = 9  # pt
CHAR_WIDTH = 0.6  # a caption character's mean width, in em (DejaVu Sans, generous)


def literal_text(fig):
    """Show every text of ``fig`` as the characters it holds: no mathtext (``$...$``) and no LaTeX, so file
    names, paths and IDs with ``$``, ``^``, ``_`` or ``%`` appear as they are. Returns ``fig``."""
    for text in fig.findobj(matplotlib.text.Text):
        text.set_parse_math(False)
        text.set_usetex(False)
    return fig


def _caption_lines(fig, caption: str) -> str:
    """``caption`` wrapped at spaces to about the figure's width (matplotlib's own ``wrap=True`` measures
    each line holding paired ``$`` as mathtext whatever ``parse_math`` says, and fails on e.g. ``$^$``)."""
    per_line = max(20, int(fig.get_figwidth() * 72 / (CHAR_WIDTH * CAPTION_SIZE)))
    return textwrap.fill(caption, per_line, break_long_words=False, break_on_hyphens=False)


def save_figure(fig, path, dpi: int = 110, caption: str = ""):
    """Save ``fig`` as PNG at ``path`` atomically and close it; ``caption``: a line under the figure
    (e.g. what the model was trained on). Every text is drawn literally (literal_text)."""
    if caption:
        fig.text(0.5, 0.0, _caption_lines(fig, caption), ha="center", va="top", fontsize=CAPTION_SIZE, color="dimgray")
    literal_text(fig)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


def _both_classes(column: np.ndarray) -> bool:
    return column.min() != column.max()


def confusion_matrices_figure(y_true, y_prob, thresholds=0.5):
    """2 x 4 grid: one 2 x 2 confusion matrix per label (rows: truth, columns: prediction)."""
    y_true = np.asarray(y_true).astype(int)
    t = as_thresholds(thresholds)
    matrices = multilabel_confusion_matrix(y_true, binarize(y_prob, t))
    fig, axes = plt.subplots(2, 4, figsize=(14, 7), constrained_layout=True)
    for ax, label, cm, tj in zip(axes.flat, LABELS, matrices, t):
        ConfusionMatrixDisplay(cm, display_labels=["no", "yes"]).plot(ax=ax, colorbar=False, cmap="Blues", values_format="d")
        ax.set_title(f"{label}: {LABEL_NAMES[label]}\n(threshold {tj:.2f})", fontsize=10)
    fig.suptitle(f"Confusion matrices, {len(y_true)} patients")
    return fig


def roc_curves_figure(y_true, y_prob):
    """ROC curve of every label on one plot, ROC AUC in the legend."""
    y_true = np.asarray(y_true).astype(int)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(7, 6.5), constrained_layout=True)
    for j, label in enumerate(LABELS):
        if not _both_classes(y_true[:, j]):
            ax.plot([], [], color=LABEL_COLORS[label], label=f"{label} (AUC undefined: one class only)")
            continue
        fpr, tpr, _ = roc_curve(y_true[:, j], y_prob[:, j])
        score = roc_auc_score(y_true[:, j], y_prob[:, j])
        ax.plot(fpr, tpr, color=LABEL_COLORS[label], lw=1.6, label=f"{label} {LABEL_NAMES[label]} (AUC = {score:.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="chance")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False positive rate (1 - specificity)",
           ylabel="True positive rate (sensitivity)", title=f"ROC curves, {len(y_true)} patients")
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def pr_curves_figure(y_true, y_prob):
    """Precision-recall curve of every label on one plot, as steps (each threshold's precision holds
    until the next recall), with the average precision (AP, scikit-learn's ``average_precision_score``:
    the area under those steps) and the prevalence in a legend beside the axes."""
    y_true = np.asarray(y_true).astype(int)
    y_prob = np.asarray(y_prob, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(10, 6), constrained_layout=True)
    for j, label in enumerate(LABELS):
        if not y_true[:, j].any():
            ax.plot([], [], color=LABEL_COLORS[label], label=f"{label} (AP undefined: no positives)")
            continue
        precision, recall, _ = precision_recall_curve(y_true[:, j], y_prob[:, j])
        ap = average_precision_score(y_true[:, j], y_prob[:, j])
        ax.plot(recall, precision, color=LABEL_COLORS[label], lw=1.6, drawstyle="steps-post",
                label=f"{label} {LABEL_NAMES[label]} (AP = {ap:.3f}, prevalence {y_true[:, j].mean():.2f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="Recall (sensitivity)", ylabel="Precision (PPV)",
           title=f"Precision-recall curves, {len(y_true)} patients")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, borderaxespad=0.0)
    ax.grid(alpha=0.3)
    return fig


GRADCAM_CMAP = "jet"  # Grad-CAM colours, 0 (blue) to 1 (red), the same in the overlay and its colour bar


def overlay_heatmap(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """A [0, 1] heatmap (any size, upsampled bilinearly) over an RGB uint8 image in ``GRADCAM_CMAP`` colours,
    each pixel's opacity ``alpha`` times its heat: where the heat is low the photograph shows as it is."""
    h, w = image.shape[:2]
    heat = cv2.resize(np.asarray(heatmap, dtype=np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    heat = np.clip(heat, 0.0, 1.0)[..., None]
    colored = 255.0 * plt.get_cmap(GRADCAM_CMAP)(heat[..., 0])[..., :3]
    blended = (1.0 - alpha * heat) * np.asarray(image, dtype=np.float64) + alpha * heat * colored
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def _label_list(flags) -> str:
    names = [label for label, flag in zip(LABELS, flags) if flag]
    return ", ".join(names) if names else "none"


def _prob_line(probs) -> str:
    return "  ".join(f"{label} {p:.2f}" for label, p in zip(LABELS, probs))


def qualitative_figure(examples, thresholds=0.5, title: str = "", notes=()):
    """One row per example: left eye, right eye, and the patient's true labels, predicted labels (with
    what was missed and what was predicted wrongly) and probabilities.

    ``examples``: sequence of dicts with keys label, id, left, right (uint8 RGB), truth (8,), prob (8,);
    ``label`` is the label the patient was chosen for. ``notes``: lines under the title, e.g. the labels
    without an example (``odir_core.evaluation.reports.missing_examples``).
    """
    t = as_thresholds(thresholds)
    if not examples:
        raise ValueError("qualitative_figure needs at least one example")
    n = len(examples)
    fig, axes = plt.subplots(n, 3, figsize=(12, 3.1 * n), gridspec_kw={"width_ratios": [1, 1, 1.6]},
                             squeeze=False, constrained_layout=True)
    for row, ex in zip(axes, examples):
        truth = np.asarray(ex["truth"]).astype(bool)
        pred = binarize(np.asarray(ex["prob"])[None], t)[0].astype(bool)
        for ax, side in zip(row[:2], ("left", "right")):
            ax.imshow(ex[side])
            ax.set_title(f"patient {ex['id']}, {side} eye", fontsize=9)
            ax.axis("off")
        ax = row[2]
        ax.axis("off")
        lines = [
            (f"patient {ex['id']}, shown for {ex['label']} ({LABEL_NAMES[ex['label']]})", 11, "bold"),
            (f"true:          {_label_list(truth)}", 10, "normal"),
            (f"predicted:   {_label_list(pred)}", 10, "normal"),
            (f"missed: {_label_list(truth & ~pred)}     wrongly predicted: {_label_list(pred & ~truth)}", 10, "normal"),
        ]
        for y, (text, size, weight) in zip((0.95, 0.75, 0.60, 0.45), lines):
            ax.text(0.0, y, text, fontsize=size, weight=weight, va="top", transform=ax.transAxes)
        ax.text(0.0, 0.28, "probabilities:\n" + _prob_line(ex["prob"]), fontsize=9, va="top", family="monospace",
                transform=ax.transAxes)
    heading = "\n".join([title, *notes] if title else list(notes))
    if heading:
        fig.suptitle(heading)
    return fig


def prediction_figure(left, right, probs, thresholds=0.5, title: str = "", heatmaps=None, gradcam_label: str = ""):
    """The per-patient figure of predict: both eyes (Grad-CAM overlaid when ``heatmaps`` is a pair, with a
    colour bar; ``gradcam_label`` says what it explains) and a bar chart of the eight probabilities with
    each label's threshold."""
    t = as_thresholds(thresholds)
    probs = np.asarray(probs, dtype=np.float64)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.6), gridspec_kw={"width_ratios": [1, 1, 1.3]}, constrained_layout=True)
    for ax, image, side, k in zip(axes[:2], (left, right), ("Left", "Right"), (0, 1)):
        shown = overlay_heatmap(image, heatmaps[k]) if heatmaps is not None else image
        ax.imshow(shown)
        ax.set_title(f"{side} eye" + (f" + Grad-CAM ({gradcam_label})" if heatmaps is not None else ""), fontsize=10)
        ax.axis("off")
    if heatmaps is not None:
        colours = matplotlib.cm.ScalarMappable(matplotlib.colors.Normalize(0.0, 1.0), plt.get_cmap(GRADCAM_CMAP))
        fig.colorbar(colours, ax=list(axes[:2]), location="bottom", shrink=0.6, aspect=40,
                     label="Grad-CAM: how much the region raised the label's score (0 none, 1 most; "
                           "colour weighs in with its value)")
    ax = axes[2]
    y = np.arange(len(LABELS))[::-1]
    positive = probs > t
    ax.barh(y, probs, color=["tab:red" if p else "tab:gray" for p in positive])
    for yi, tj in zip(y, t):
        ax.plot([tj, tj], [yi - 0.4, yi + 0.4], color="k", lw=1)
    for yi, p in zip(y, probs):
        inside = p > 0.85  # long bars carry their value inside, in white
        ax.text(p - 0.02 if inside else p + 0.02, yi, f"{p:.3f}", va="center", ha="right" if inside else "left",
                fontsize=8, color="white" if inside else "black")
    ax.set_yticks(y, [f"{label} {LABEL_NAMES[label]}" for label in LABELS], fontsize=8)
    ax.set(xlim=(0, 1), xlabel="probability (black tick: threshold; red: predicted)")
    ax.set_title("Predicted: " + _label_list(positive), fontsize=10)
    if title:
        fig.suptitle(title)
    return fig
