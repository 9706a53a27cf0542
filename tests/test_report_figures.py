"""The evaluation figures say what they show: PR curves as steps with scikit-learn's average precision
in a legend beside the axes; the qualitative figure's true and predicted labels, and the labels it
has no example of."""

from __future__ import annotations

import re

import matplotlib.pyplot as plt
import numpy as np
import pytest
from sklearn.metrics import average_precision_score, precision_recall_curve

from odir_core.evaluation import plots, reports
from odir_core.labels import LABELS


@pytest.fixture
def case():
    rng = np.random.default_rng(7)
    y_true = (rng.random((80, 8)) < 0.3).astype(int)
    y_true[:, LABELS.index("H")] = 0  # no patient with H
    y_prob = np.clip(0.45 * y_true + 0.6 * rng.random((80, 8)), 0, 1)
    return np.arange(1000, 1080), y_true, y_prob


def _texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(plt.Text) if t.get_text()]


def test_pr_legend_shows_sklearn_average_precision(case):
    _, y_true, y_prob = case
    fig = plots.pr_curves_figure(y_true, y_prob)
    ax = fig.axes[0]
    legend = {t.get_text()[0]: t.get_text() for t in ax.get_legend().get_texts()}
    for j, label in enumerate(LABELS):
        if label == "H":
            assert "AP undefined: no positives" in legend[label]
            continue
        shown = float(re.search(r"AP = ([0-9.]+)", legend[label])[1])
        assert shown == pytest.approx(average_precision_score(y_true[:, j], y_prob[:, j]), abs=5e-4)
        assert "AUC" not in legend[label]
    plt.close(fig)


def test_pr_curves_are_steps_and_the_legend_covers_none(case):
    _, y_true, y_prob = case
    fig = plots.pr_curves_figure(y_true, y_prob)
    ax = fig.axes[0]
    lines = [line for line in ax.get_lines() if len(line.get_xdata())]
    assert len(lines) == 7 and {line.get_drawstyle() for line in lines} == {"steps-post"}
    precision, recall, _ = precision_recall_curve(y_true[:, 0], y_prob[:, 0])
    np.testing.assert_array_equal(lines[0].get_xdata(), recall)
    np.testing.assert_array_equal(lines[0].get_ydata(), precision)
    fig.canvas.draw()
    legend_box = ax.get_legend().get_window_extent()
    assert legend_box.x0 >= ax.get_window_extent().x1  # beside the axes, over no curve
    plt.close(fig)


def _examples(case):
    ids, y_true, y_prob = case
    image = np.zeros((32, 32, 3), np.uint8)
    return reports.pick_examples(ids, y_true, y_prob, lambda pid: (image, image))


def test_qualitative_figure_says_true_and_predicted_labels(case):
    examples = _examples(case)
    fig = plots.qualitative_figure(examples[:1], 0.5)
    texts = _texts(fig)
    ex = examples[0]
    truth = ", ".join(label for label, v in zip(LABELS, ex["truth"]) if v)
    predicted = ", ".join(label for label, p in zip(LABELS, ex["prob"]) if p > 0.5)
    assert any(re.fullmatch(rf"true:\s+{re.escape(truth)}", t) for t in texts)
    assert any(re.fullmatch(rf"predicted:\s+{re.escape(predicted)}", t) for t in texts)
    assert not any("found" in t or "example of" in t for t in texts)
    plt.close(fig)


def test_labels_without_an_example_are_named_in_the_figure(case):
    ids, y_true, y_prob = case
    examples = _examples(case)
    assert "H" not in {e["label"] for e in examples}
    notes = reports.missing_examples(ids, y_true, examples)
    assert notes == ["no patient with label H (Hypertension) in this set"]
    fig = plots.qualitative_figure(examples, 0.5, "Predicted at the threshold 0.5", notes)
    assert "no patient with label H (Hypertension) in this set" in fig._suptitle.get_text()
    plt.close(fig)


def test_missing_examples_tells_the_reasons_apart():
    ids = np.array([1, 2, 3])
    y_true = np.zeros((3, 8), int)
    y_true[0, [LABELS.index("D"), LABELS.index("A")]] = 1  # patient 1: D and A, shown for D
    y_true[1, LABELS.index("N")] = 1
    y_true[2, LABELS.index("M")] = 1  # patient 3 has no images
    image = np.zeros((8, 8, 3), np.uint8)
    examples = reports.pick_examples(ids, y_true, np.full((3, 8), 0.5), lambda pid: None if pid == 3 else (image, image))
    assert [e["label"] for e in examples] == ["N", "D"]
    notes = reports.missing_examples(ids, y_true, examples)
    assert "label A (Age-related macular degeneration): see patient 1 above" in notes
    assert "label M (Pathological myopia): the images of its 1 patient(s) could not be read" in notes
    assert "no patient with label G (Glaucoma) in this set" in notes and len(notes) == 6
