"""odir_core.scores against the study's published numbers, the official ODIR-2019 values and scikit-learn."""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score, f1_score, roc_auc_score

from odir_core.evaluation.submission import read_label_file
from odir_core.labels import LABELS
from odir_core.scores import (
    MetricsError,
    MetricsWarning,
    challenge_metrics,
    per_label_table,
    study_metrics,
)
from reference_data import EXPERIMENTS, STUDY_TABLE, needs, require

needs_reference = needs(STUDY_TABLE)
KEYS = ("kappa", "f1", "auc", "final")


def _experiment(k):
    folder = EXPERIMENTS / f"experiment_{k}"
    return read_label_file(folder / "ground_truth.xlsx"), read_label_file(folder / "probs.xlsx")


@pytest.fixture(scope="module")
def experiment_15():
    require(EXPERIMENTS / "experiment_15" / "probs.xlsx")
    return _experiment(15)


@pytest.fixture
def random_case():
    rng = np.random.default_rng(0)
    y = (rng.random((60, 8)) < 0.3).astype(int)
    y[:2] = [[1] * 8, [0] * 8]  # every label has both classes
    p = np.clip(0.35 * y + 0.65 * rng.random((60, 8)), 0, 1)
    return y, p


# --------------------------------------------------------------------------- the study's numbers


@needs_reference
@pytest.mark.parametrize("k", range(16))
def test_reproduces_seed_experiments_csv(k):
    table = pd.read_csv(STUDY_TABLE).set_index("experiment")
    gt, probs = _experiment(k)
    assert gt["ID"].tolist() == probs["ID"].tolist()
    y, p = gt[list(LABELS)], probs[list(LABELS)]
    got = {f"seed_{key}": v for key, v in study_metrics(y, p).items()}
    got |= {f"challenge_{key}": v for key, v in challenge_metrics(y, p).items()}
    for column, value in got.items():
        # the csv holds 6 decimals: a correct value lies within half a unit of the last one
        assert abs(value - table.loc[k, column]) <= 5e-7 + 1e-12, (column, value, table.loc[k, column])


def test_official_numbers_experiment_15(experiment_15):
    gt, probs = experiment_15
    got = challenge_metrics(gt, probs)
    official = {"kappa": 0.6014981085268922, "f1": 0.8941618911174785, "auc": 0.9279044627559762, "final": 0.8078548208001156}
    for key in KEYS:
        assert abs(got[key] - official[key]) <= 1e-12, key


def test_classification_report_experiment_15(experiment_15):
    gt, probs = experiment_15
    # the study's printed scikit-learn report (precision, recall, f1, support)
    printed = {
        "N": (0.56, 0.79, 0.65, 214), "D": (0.73, 0.72, 0.73, 226), "G": (0.56, 0.65, 0.60, 34),
        "C": (0.89, 0.89, 0.89, 37), "A": (0.68, 0.73, 0.70, 37), "H": (0.42, 0.55, 0.48, 29),
        "M": (0.84, 0.87, 0.85, 30), "O": (0.57, 0.59, 0.58, 217), "weighted avg": (0.64, 0.71, 0.67, 824),
    }
    table = per_label_table(gt, probs, averages=True)
    assert table.index.tolist()[:8] == list(LABELS)
    for row, (precision, recall, f1, support) in printed.items():
        got = table.loc[row]
        for name, value in (("precision", precision), ("recall", recall), ("f1", f1)):
            assert abs(got[name] - value) <= 0.005 + 1e-12, (row, name, got[name])
        assert got["support"] == support


# --------------------------------------------------------------------------- definitions vs scikit-learn


def test_study_metrics_match_sklearn_definitions(random_case):
    y, p = random_case
    pred = (p > 0.5).astype(int)
    kappa = np.mean([cohen_kappa_score(y[:, j], pred[:, j]) for j in range(8)])
    f1 = f1_score(y, pred, average="weighted", zero_division=0)
    auc = roc_auc_score(y, p, average="weighted")
    got = study_metrics(y, p)
    assert got["kappa"] == pytest.approx(kappa, abs=1e-12)
    assert got["f1"] == pytest.approx(f1, abs=1e-12)
    assert got["auc"] == pytest.approx(auc, abs=1e-12)
    assert got["final"] == pytest.approx((kappa + f1 + auc) / 3, abs=1e-12)


def test_per_label_threshold_and_strict_comparison():
    y = np.array([[1, 0, 1, 0, 1, 0, 1, 0], [0, 1, 0, 1, 0, 1, 0, 1]])
    p = np.full((2, 8), 0.5)
    # a probability equal to the threshold is negative (official: pr > th): nothing predicted
    assert challenge_metrics(y, p)["f1"] == pytest.approx(0.5)  # 8 of 16 cells right (all the zeros)
    # per-label thresholds: below 0.5 everywhere -> everything predicted positive
    assert challenge_metrics(y, p, threshold=[0.4] * 8)["f1"] == pytest.approx(0.5)
    table = per_label_table(y, p, threshold=[0.4] * 4 + [0.6] * 4)
    assert table["recall"].tolist() == [1.0] * 4 + [0.0] * 4
    with pytest.raises(MetricsError, match="threshold"):
        study_metrics(y, p, threshold=[0.5, 0.5])
    with pytest.raises(MetricsError, match=r"\[0, 1\]"):
        study_metrics(y, p, threshold=1.5)


def test_dataframe_with_id_column_uses_label_columns(random_case):
    y, p = random_case
    gt = pd.DataFrame(y, columns=list(LABELS)).assign(ID=range(60))
    probs = pd.DataFrame(p, columns=list(LABELS))[list(reversed(LABELS))].assign(ID=range(60))
    assert study_metrics(gt, probs) == study_metrics(y, p)


# --------------------------------------------------------------------------- degenerate input


def test_label_without_positives_gives_nan_auc_and_warning(random_case):
    y, p = random_case
    y = y.copy()
    y[:, 5] = 0  # H absent from this ground truth
    with pytest.warns(MetricsWarning, match=r"ROC AUC is undefined for label\(s\) H"):
        table = per_label_table(y, p)
    assert math.isnan(table.loc["H", "auc"])
    assert table.loc["H", "support"] == 0
    with pytest.warns(MetricsWarning):
        got = study_metrics(y, p)
    # a label without positives has weight 0 in scikit-learn's weighted average too
    keep = [j for j in range(8) if j != 5]
    assert got["auc"] == pytest.approx(roc_auc_score(y[:, keep], p[:, keep], average="weighted"), abs=1e-12)
    assert not math.isnan(got["final"])


def test_label_all_positive_is_left_out_of_weighted_auc(random_case):
    y, p = random_case
    y = y.copy()
    y[:, 0] = 1
    with pytest.warns(MetricsWarning, match="only one class"):
        got = study_metrics(y, p)
    assert got["auc"] == pytest.approx(roc_auc_score(y[:, 1:], p[:, 1:], average="weighted"), abs=1e-12)


@pytest.mark.filterwarnings("ignore:ROC AUC is undefined:odir_core.scores.MetricsWarning")
def test_constant_truth_and_prediction_gives_nan_kappa(random_case):
    y, p = random_case
    y, p = y.copy(), p.copy()
    y[:, 2] = 0
    p[:, 2] = 0.1
    with pytest.warns(MetricsWarning, match=r"Cohen kappa is undefined for label\(s\) G"):
        got = study_metrics(y, p)
    pred = (p > 0.5).astype(int)
    others = [cohen_kappa_score(y[:, j], pred[:, j]) for j in range(8) if j != 2]
    assert got["kappa"] == pytest.approx(np.mean(others), abs=1e-12)


def test_challenge_metrics_single_class_is_nan():
    y = np.zeros((3, 8), dtype=int)
    p = np.full((3, 8), 0.2)
    with pytest.warns(MetricsWarning):
        got = challenge_metrics(y, p)
    assert math.isnan(got["auc"]) and math.isnan(got["kappa"]) and math.isnan(got["final"])
    assert got["f1"] == 1.0


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_probabilities_are_named(random_case, bad):
    y, p = random_case
    p = p.copy()
    p[3, 1] = bad
    p[7, 6] = bad
    with pytest.raises(MetricsError, match=r"2 NaN/inf value\(s\) at row 3 column D, row 7 column M"):
        study_metrics(y, p)
    with pytest.raises(MetricsError, match="NaN/inf"):
        challenge_metrics(y, p)


def test_probabilities_outside_unit_interval(random_case):
    y, p = random_case
    p = p.copy()
    p[4, 0] = 1.5
    with pytest.raises(MetricsError, match=r"outside at row 4 column N.*sigmoid"):
        per_label_table(y, p)


@pytest.mark.parametrize(
    "y_shape, p_shape, message",
    [((10, 8), (9, 8), "must match"), ((10, 7), (10, 7), r"shape \(n, 8\)"), ((10,), (10,), r"shape \(n, 8\)"), ((0, 8), (0, 8), "no rows")],
)
def test_shape_errors(y_shape, p_shape, message):
    with pytest.raises(MetricsError, match=message):
        study_metrics(np.zeros(y_shape), np.zeros(p_shape))


def test_non_binary_truth(random_case):
    y, p = random_case
    y = y.astype(float)
    y[5, 7] = 0.5
    with pytest.raises(MetricsError, match=r"only 0 and 1; 1 other value\(s\) at row 5 column O"):
        challenge_metrics(y, p)


@pytest.mark.parametrize("score", [study_metrics, challenge_metrics, per_label_table])
def test_warnings_point_at_the_caller_not_at_odir_core(random_case, score):
    y, p = random_case
    y = np.zeros_like(y)  # every score undefined somewhere
    with pytest.warns(MetricsWarning) as caught:
        score(y, p)
    assert {Path(w.filename).resolve() for w in caught} == {Path(__file__).resolve()}
