"""Evaluation reports from probabilities files: the study's published numbers, the official ODIR-2019 values,
the study's printed classification report, submission checks, thresholds, TTA views, the HTML page."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import cv2
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import cohen_kappa_score, f1_score

from odir_core.evaluation import reports
from odir_core.evaluation.evaluate import folder_pairs
from odir_core.evaluation.evaluate import main as evaluate_main
from odir_core.evaluation.inference import Backend, gradcam_map, tta_views
from odir_core.evaluation.submission import check_submission, read_label_file
from odir_core.evaluation.thresholds import CANDIDATES, ThresholdError, load_thresholds, save_thresholds, tune_thresholds
from odir_core.labels import LABELS
from reference_data import EXPERIMENTS, REAL_SAMPLES, STUDY_TABLE, needs

needs_reference = needs(STUDY_TABLE)
# No model is loaded in these tests: a loader that fails loudly if one were.
NO_MODEL = Backend(name="test_odir", model_suffixes=(".keras",), loader="no_such_module:load")

# The study's printed classification report of experiment 15 (reference README): precision, recall, F1, support.
PRINTED_15 = {
    "N": (0.56, 0.79, 0.65, 214), "D": (0.73, 0.72, 0.73, 226), "G": (0.56, 0.65, 0.60, 34),
    "C": (0.89, 0.89, 0.89, 37), "A": (0.68, 0.73, 0.70, 37), "H": (0.42, 0.55, 0.48, 29),
    "M": (0.84, 0.87, 0.85, 30), "O": (0.57, 0.59, 0.58, 217), "weighted avg": (0.64, 0.71, 0.67, 824),
}
OFFICIAL_15 = {"kappa": 0.6014981085268922, "f1": 0.8941618911174785, "auc": 0.9279044627559762, "final": 0.8078548208001156}


def _files(k):
    folder = EXPERIMENTS / f"experiment_{k}"
    return folder / "probs.xlsx", folder / "ground_truth.xlsx"


def _arrays(k):
    probs, truth = (read_label_file(p) for p in _files(k))
    return probs["ID"].to_numpy(), truth[list(LABELS)].to_numpy().astype(int), probs[list(LABELS)].to_numpy()


@pytest.fixture(scope="module")
def eval15(tmp_path_factory):
    """`--probs` evaluation of experiment 15 through the CLI, with thresholds tuned on the same file."""
    out = tmp_path_factory.mktemp("eval") / "exp15"
    rc = evaluate_main(NO_MODEL, ["--probs", str(_files(15)[0]), "--out", str(out), "--tune-thresholds",
                                  "--images", str(REAL_SAMPLES)])
    assert rc == 0
    return out


@needs_reference
@pytest.mark.parametrize("k", range(16))
def test_probs_metrics_reproduce_seed_experiments(k):
    row = pd.read_csv(STUDY_TABLE).set_index("experiment").loc[k]
    _, y_true, y_prob = _arrays(k)
    summary = reports.summarize(y_true, y_prob)
    for key in ("kappa", "f1", "auc", "final"):
        assert summary["study"]["at_0.5"][key] == pytest.approx(row[f"seed_{key}"], abs=6e-7)
        assert summary["challenge"]["at_0.5"][key] == pytest.approx(row[f"challenge_{key}"], abs=6e-7)


@needs_reference
def test_experiment_15_official_numbers(eval15):
    summary = json.loads((eval15 / "metrics.json").read_text())
    for key, value in OFFICIAL_15.items():
        assert summary["challenge"]["at_0.5"][key] == pytest.approx(value, abs=1e-12)
    assert summary["n_patients"] == 698


@needs_reference
def test_experiment_15_classification_report_matches_the_study(eval15):
    text = (eval15 / "classification_report.txt").read_text()
    at_half = text.split("tuned thresholds")[0]
    for name, (precision, recall, f1, support) in PRINTED_15.items():
        line = re.search(rf"^\s*{re.escape(name)}\s+(\S+)\s+(\S+)\s+(\S+)\s+(\d+)\s*$", at_half, re.M)
        assert line, f"no line for {name} in the classification report"
        assert tuple(map(float, line.groups())) == (precision, recall, f1, support)
    table = json.loads((eval15 / "metrics.json").read_text())["per_label"]["at_0.5"]
    for label in LABELS:
        precision, recall, f1, support = PRINTED_15[label]
        row = table[label]
        assert (round(row["precision"], 2), round(row["recall"], 2), round(row["f1"], 2), row["support"]) == (
            precision, recall, f1, support)


@needs_reference
def test_evaluation_folder_files(eval15):
    names = {p.name for p in eval15.iterdir()}
    assert names == {"probs.xlsx", "ground_truth.xlsx", "submission.csv", "metrics.json", "classification_report.txt",
                     "confusion_matrices.png", "roc_curves.png", "pr_curves.png", "qualitative.png", "report.html",
                     "thresholds.json"}
    # the study's format: same columns, IDs and values as its own files
    for ours, theirs in zip(("probs.xlsx", "ground_truth.xlsx"), _files(15)):
        a, b = pd.read_excel(eval15 / ours), pd.read_excel(theirs)
        assert list(a.columns) == list(b.columns) == ["ID", *LABELS]
        pd.testing.assert_frame_equal(a, b, check_dtype=False, atol=1e-9)
    check_submission(eval15 / "submission.csv", _files(15)[1])  # the challenge's checks pass
    sub = pd.read_csv(eval15 / "submission.csv")
    np.testing.assert_allclose(sub[list(LABELS)], pd.read_excel(_files(15)[0])[list(LABELS)], atol=1e-8)
    for png in ("confusion_matrices.png", "roc_curves.png", "pr_curves.png", "qualitative.png"):
        img = cv2.imread(str(eval15 / png))
        assert img is not None and img.shape[0] > 300 and img.std() > 10
    html = (eval15 / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4
    assert "0.8079" in html and "threshold tuned" in html  # challenge final at 0.5; tuned columns side by side


@needs_reference
def test_qualitative_examples_are_patients_with_the_label():
    ids, y_true, y_prob = _arrays(15)
    available = {int(p.name.split("_")[0]) for p in REAL_SAMPLES.glob("*_left.png")}
    examples = reports.pick_examples(ids, y_true, y_prob, folder_pairs(REAL_SAMPLES))
    assert [e["label"] for e in examples] == list(LABELS)  # the 23 sample patients cover every label
    assert len({e["id"] for e in examples}) == len(examples)
    for e in examples:
        row = list(ids).index(e["id"])
        assert e["id"] in available and y_true[row, LABELS.index(e["label"])] == 1
        assert e["left"].ndim == 3 and max(e["left"].shape[:2]) <= 256  # shrunk for display


@needs_reference
def test_tuned_thresholds_side_by_side(eval15):
    summary = json.loads((eval15 / "metrics.json").read_text())
    tuned = load_thresholds(eval15 / "thresholds.json")
    assert summary["thresholds"]["at_tuned"] == dict(zip(LABELS, tuned.tolist()))
    # tuned on these very patients, per-label F1 cannot be lower than at 0.5
    for label in LABELS:
        assert summary["per_label"]["at_tuned"][label]["f1"] >= summary["per_label"]["at_0.5"][label]["f1"] - 1e-12
        assert summary["per_label"]["at_tuned"][label]["auc"] == summary["per_label"]["at_0.5"][label]["auc"]


@needs_reference
@pytest.mark.parametrize("metric", ["f1", "kappa"])
def test_tune_thresholds_finds_the_grid_maximum(metric):
    _, y_true, y_prob = _arrays(15)
    tuned = tune_thresholds(y_true, y_prob, metric)
    score = f1_score if metric == "f1" else cohen_kappa_score
    for j in range(len(LABELS)):
        best = max(score(y_true[:, j], (y_prob[:, j] > c).astype(int)) for c in CANDIDATES)
        assert score(y_true[:, j], (y_prob[:, j] > tuned[j]).astype(int)) == pytest.approx(best, abs=1e-12)


def test_tune_thresholds_keeps_half_without_positives():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 2, (40, 8))
    y_true[:, 2] = 0
    tuned = tune_thresholds(y_true, rng.random((40, 8)))
    assert tuned[2] == 0.5


def test_thresholds_file_round_trip_and_errors(tmp_path):
    t = np.linspace(0.1, 0.8, 8)
    save_thresholds(tmp_path / "t.json", t, metric="f1", source="test", n_patients=3)
    np.testing.assert_array_equal(load_thresholds(tmp_path / "t.json"), t)
    (tmp_path / "bad.json").write_text('{"thresholds": {"N": 0.5}}')
    with pytest.raises(ThresholdError, match="bad.json"):
        load_thresholds(tmp_path / "bad.json")
    with pytest.raises(ThresholdError, match="strictly between"):
        save_thresholds(tmp_path / "x.json", [0.5] * 7 + [1.0], metric="f1", source="test", n_patients=3)


@needs_reference
@pytest.mark.parametrize(
    "change, message",
    [
        ("columns", "columns in the wrong order"),
        ("rows", "rows in the wrong order"),
        ("missing", "ground-truth ID(s) missing"),
    ],
)
def test_submission_errors_are_reported(tmp_path, capsys, change, message):
    probs = pd.read_excel(_files(15)[0])
    if change == "columns":
        probs = probs[["ID", "D", "N", "G", "C", "A", "H", "M", "O"]]
    elif change == "rows":
        probs = probs.iloc[[1, 0, *range(2, len(probs))]]
    else:
        probs = probs.drop(index=5)
    path = tmp_path / "submission.csv"
    probs.to_csv(path, index=False)
    rc = evaluate_main(NO_MODEL, ["--probs", str(path), "--truth", str(_files(15)[1]), "--out", str(tmp_path / "ev")])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "ev").exists()


@needs_reference
def test_existing_output_folder_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "ev"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc = evaluate_main(NO_MODEL, ["--probs", str(_files(3)[0]), "--out", str(out)])
    assert rc == 2 and "already exists" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


@needs_reference
def test_default_output_folder_is_numbered(tmp_path):
    for name in ("probs.xlsx", "ground_truth.xlsx"):  # the first 60 patients of experiment 3
        frame = read_label_file(EXPERIMENTS / "experiment_3" / name).head(60)
        reports.write_label_xlsx(tmp_path / name, frame["ID"], frame[list(LABELS)])
    assert evaluate_main(NO_MODEL, ["--probs", str(tmp_path / "probs.xlsx")]) == 0
    assert evaluate_main(NO_MODEL, ["--probs", str(tmp_path / "probs.xlsx")]) == 0
    assert (tmp_path / "eval-probs" / "metrics.json").is_file()
    assert "No qualitative figure" in (tmp_path / "eval-probs" / "report.html").read_text()  # says why there is none
    assert (tmp_path / "eval-probs-2" / "metrics.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_probs_without_ground_truth_is_a_clear_error(tmp_path, capsys):
    ids = [1, 2, 3]
    reports.write_label_xlsx(tmp_path / "p.xlsx", ids, np.full((3, 8), 0.3))
    rc = evaluate_main(NO_MODEL, ["--probs", str(tmp_path / "p.xlsx"), "--out", str(tmp_path / "ev")])
    assert rc == 2 and "no ground truth" in capsys.readouterr().err


def test_tta_views_flip_and_swap_eyes():
    left = np.arange(2 * 4 * 5 * 3, dtype=np.float32).reshape(2, 4, 5, 3)
    right = -left
    views = tta_views(left, right, "both")
    assert len(views) == 4
    np.testing.assert_array_equal(views[0][0], left)
    np.testing.assert_array_equal(views[1][0], np.flip(right, axis=2))  # mirrored right eye becomes the left
    np.testing.assert_array_equal(views[1][1], np.flip(left, axis=2))
    np.testing.assert_array_equal(views[2][0], np.flip(left, axis=1))
    np.testing.assert_array_equal(views[3][0], np.flip(np.flip(right, axis=2), axis=1))
    assert len(tta_views(left, right, "hflip")) == 2 and len(tta_views(left, right, "none")) == 1


def test_gradcam_map_hand_computed():
    # two channels on a 2x2 map; channel weights = mean gradients = (1, -0.5)
    a = np.stack([np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[4.0, 0.0], [0.0, 0.0]])], axis=-1)
    g = np.stack([np.full((2, 2), 1.0), np.full((2, 2), -0.5)], axis=-1)
    expected = np.maximum(np.array([[1 - 2.0, 2.0], [3.0, 4.0]]), 0) / 4.0
    np.testing.assert_allclose(gradcam_map(a, g), expected, atol=1e-7)
    np.testing.assert_allclose(gradcam_map(np.moveaxis(a, -1, 0), np.moveaxis(g, -1, 0), channels_last=False), expected, atol=1e-7)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@needs_reference
@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium installed (apt-get install chromium) to render report.html")
def test_report_html_renders_in_chromium(eval15, tmp_path):
    shot = tmp_path / "report.png"
    offline = ["--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
               f"--user-data-dir={tmp_path / 'profile'}"]  # a report is a local file: no network at all
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", *offline, "--hide-scrollbars",
                    "--window-size=1200,1800", f"--screenshot={shot}", (eval15 / "report.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[:2] == (1800, 1200)
    # a rendered page: mostly white background with dark text and coloured figures, not a blank or error page
    gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    assert 0.5 < (gray > 240).mean() < 0.98 and (gray < 100).mean() > 0.005


@needs_reference
def test_config_file_gives_options_and_flags_override(tmp_path, capsys):
    for name in ("probs.xlsx", "ground_truth.xlsx"):  # the first 40 patients of experiment 14
        frame = read_label_file(EXPERIMENTS / "experiment_14" / name).head(40)
        reports.write_label_xlsx(tmp_path / name, frame["ID"], frame[list(LABELS)])
    config = tmp_path / "eval.toml"
    config.write_text(f'probs = "{tmp_path / "probs.xlsx"}"\ntune_thresholds = true\nthreshold_metric = "kappa"\n')
    assert evaluate_main(NO_MODEL, ["--config", str(config), "--threshold-metric", "f1", "--out", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "thresholds.json").read_text())["metric"] == "f1"
    config.write_text('tta = "sideways"\n')
    with pytest.raises(SystemExit) as exc:
        evaluate_main(NO_MODEL, ["--config", str(config)])
    assert exc.value.code == 2 and "sideways" in capsys.readouterr().err


@needs_reference
def test_report_links_every_data_file(eval15):
    html = (eval15 / "report.html").read_text()
    for name in ("probs.xlsx", "ground_truth.xlsx", "submission.csv", "metrics.json", "classification_report.txt",
                 "thresholds.json"):
        assert f"href='{name}'" in html
