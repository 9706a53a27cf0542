"""predict and evaluate on awkward inputs: photographs too small to hold a fundus, file names with
mathtext characters in figures, probabilities and labels out of range, duplicate patient IDs in --batch."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import matplotlib
import numpy as np
import pandas as pd
import pytest
from fundus_images import write_jpeg
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from odir_core.data.annotations import read_annotations
from odir_core.data.layouts import GRAND_CHALLENGE
from odir_core.data.prepare import main as prepare_main
from odir_core.data.preprocess import PreprocessError, prepare_image
from odir_core.data.synthetic import generate
from odir_core.evaluation import plots, reports
from odir_core.evaluation.evaluate import main as evaluate_main
from odir_core.evaluation.inference import Backend
from odir_core.labels import LABELS
from reference_data import REAL_SAMPLES, needs
from tiny_runs import new_run, run_config, shared_models
from torch_odir.predict import main as torch_predict

real = needs(REAL_SAMPLES / "samples.csv")
RAW = REAL_SAMPLES / "raw"
NO_MODEL = Backend(name="test_odir", model_suffixes=(".keras",), loader="no_such_module:load")  # --probs loads none


@pytest.fixture(scope="module")
def torch_model(tmp_path_factory):
    """A random-weight best.pth in a run folder of its own (64 px inputs)."""
    data, _, model = shared_models(tmp_path_factory)
    return new_run(tmp_path_factory.mktemp("security_predict") / "torch", model, run_config(data))


def _shrunk(path: Path, short_side: int) -> np.ndarray:
    """A BGR photograph resized so its short side is ``short_side`` px."""
    img = cv2.imread(str(path))
    scale = short_side / min(img.shape[:2])
    return cv2.resize(img, (round(img.shape[1] * scale), round(img.shape[0] * scale)), interpolation=cv2.INTER_AREA)


def _one_line(err: str) -> str:
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err.strip()


# 12: a photograph too small to hold a fundus ------------------------------------------------------


@real
def test_tiny_photograph_is_refused_in_one_line(torch_model, tmp_path, capsys):
    tiny = tmp_path / "tiny.png"
    cv2.imwrite(str(tiny), _shrunk(RAW / "raw_0.png", 5))
    rc = torch_predict(["--model", str(torch_model), str(tiny), str(RAW / "raw_1.png")])
    captured = capsys.readouterr()
    assert rc == 2 and "predicted" not in captured.out
    line = _one_line(captured.err)
    assert "tiny.png: photograph too small" in line and "at least 16 px" in line  # the model's inputs are 64 px


@real
def test_tiny_photograph_is_skipped_and_listed_in_a_batch(torch_model, tmp_path, capsys):
    cv2.imwrite(str(tmp_path / "tiny.png"), _shrunk(RAW / "raw_0.png", 5))
    rows = {"id": ["p1539", "ptiny"], "left": [str(REAL_SAMPLES / "1539_left.png"), "tiny.png"],
            "right": [str(REAL_SAMPLES / "1539_right.png"), str(RAW / "raw_1.png")]}
    pd.DataFrame(rows).to_csv(tmp_path / "b.csv", index=False)
    rc = torch_predict(["--model", str(torch_model), "--batch", str(tmp_path / "b.csv")])
    captured = capsys.readouterr()
    assert rc == 1 and "1 of 2 patients predicted" in captured.out
    assert "skipped/failed row 3 (id ptiny)" in captured.err and "too small" in captured.err
    result = pd.read_csv(tmp_path / "b_predictions.csv", keep_default_na=False)
    assert result.loc[0, "error"] == "" and "photograph too small" in result.loc[1, "error"]


@real
def test_fundus_may_be_enlarged_at_most_four_times(tmp_path):
    for side in (16, 15):
        cv2.imwrite(str(tmp_path / f"{side}.png"), _shrunk(RAW / "raw_0.png", side))
    assert prepare_image(tmp_path / "16.png", 64).shape == (64, 64, 3)  # 16 px fundus: 4x
    with pytest.raises(PreprocessError, match=r"15\.png: photograph too small: the fundus is \d+x15 px"):
        prepare_image(tmp_path / "15.png", 64)
    for path in sorted(RAW.glob("*.png")):  # the real photographs pass at the study's size
        assert prepare_image(path, 512).shape == (512, 512, 3)


def test_prepare_skips_the_patient_of_a_tiny_photograph(tmp_path):
    src = generate(tmp_path / "src", 2, size=96, seed=0, layout="grand-challenge", workers=1)
    images = src / GRAND_CHALLENGE.images
    photo = cv2.imread(str(images / "0_left.jpg"))[:, :, ::-1]
    write_jpeg(images / "0_left.jpg", cv2.resize(photo, (5, 4), interpolation=cv2.INTER_AREA))
    out = tmp_path / "out"
    assert prepare_main(["--source", str(src), "--out", str(out), "--size", "32", "--workers", "1"]) == 0
    report = pd.read_csv(out / "prepare_report.csv").set_index(["ID", "side"])
    assert report.loc[(0, "left"), "status"] == "error"
    assert report.loc[(0, "left"), "reason"].startswith("photograph too small: the fundus is")
    assert read_annotations(out / "annotations.xlsx", exclude_special=False)["ID"].tolist() == [1]


# 15: text in figures is shown literally ----------------------------------------------------------


def _rendered_width(text: matplotlib.text.Text) -> float:
    return text.get_window_extent(FigureCanvasAgg(text.figure).get_renderer()).width


def _literal_width(text: matplotlib.text.Text) -> float:
    """The width of ``text``'s string drawn as plain characters (no mathtext) in the same font."""
    plain = Figure().text(0, 0, text.get_text(), fontproperties=text.get_fontproperties(), parse_math=False)
    return _rendered_width(plain)


def _capture_figures(monkeypatch) -> list:
    saved, original = [], plots.save_figure

    def save(fig, path, **kwargs):
        result = original(fig, path, **kwargs)
        saved.append(fig)
        return result

    monkeypatch.setattr(plots, "save_figure", save)
    return saved


@real
def test_file_names_with_dollar_underscore_percent_appear_literally_in_the_figure(torch_model, tmp_path, capsys,
                                                                                  monkeypatch):
    left, right = tmp_path / "eye $^$ left_50%.png", tmp_path / "r $x^2$ 100%_right.png"
    shutil.copy(REAL_SAMPLES / "1539_left.png", left)
    shutil.copy(REAL_SAMPLES / "1539_right.png", right)
    saved = _capture_figures(monkeypatch)
    fig_path = tmp_path / "fig.png"
    assert torch_predict(["--model", str(torch_model), str(left), str(right), "--out", str(fig_path)]) == 0
    assert cv2.imread(str(fig_path)) is not None and capsys.readouterr().err == ""
    title = saved[0]._suptitle
    assert title.get_text() == "eye $^$ left_50%.png + r $x^2$ 100%_right.png"
    assert _rendered_width(title) == pytest.approx(_literal_width(title))  # "$x^2$" not typeset as x squared


def test_evaluation_figures_show_a_caption_with_dollar_literally(tmp_path, monkeypatch):
    saved = _capture_figures(monkeypatch)
    rng = np.random.default_rng(0)
    y_true = np.tile(np.eye(8, dtype=int), (2, 1))
    caption = "model trained on /data/$^$_50% (run /runs/$x^2$)"
    reports.write_evaluation(tmp_path / "ev", np.arange(16), y_true, rng.random((16, 8)), caption=caption)
    assert sorted(p.name for p in (tmp_path / "ev").glob("*.png")) == ["confusion_matrices.png", "pr_curves.png",
                                                                        "roc_curves.png"]
    for fig in saved:
        text = next(t for t in fig.texts if t.get_text() == caption)
        assert _rendered_width(text) == pytest.approx(_literal_width(text))


# 17: probabilities and labels out of range name the patient and the label ------------------------


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A prepared folder of 4 synthetic patients, IDs 0..3."""
    return generate(tmp_path_factory.mktemp("prepared") / "set", 4, size=16, seed=0, workers=1)


@pytest.mark.parametrize("value", ["7.5", "-2", "inf", "-inf"])
def test_probabilities_out_of_range_name_patient_and_label(prepared, tmp_path, capsys, value):
    probs = pd.DataFrame(np.full((4, 8), 0.25), columns=list(LABELS))
    probs.insert(0, "ID", [0, 1, 2, 3])
    probs["G"] = probs["G"].astype(object)
    probs.loc[2, "G"] = value
    probs.to_csv(tmp_path / "probs.csv", index=False)
    rc = evaluate_main(NO_MODEL, ["--probs", str(tmp_path / "probs.csv"), "--data", str(prepared), "--out", str(tmp_path / "ev")])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and not (tmp_path / "ev").exists()
    assert f"patient 2, label G: {float(value)} is not a probability in [0, 1]" in line and "fix" in line


@pytest.mark.parametrize("value", ["2", "0.5", "-1"])
def test_ground_truth_other_than_0_or_1_names_patient_and_label(tmp_path, capsys, value):
    table = pd.DataFrame(np.zeros((4, 8)), columns=list(LABELS))
    table.insert(0, "ID", [10, 11, 12, 13])
    table.to_csv(tmp_path / "probs.csv", index=False)
    table.loc[3, "C"] = float(value)
    table.to_csv(tmp_path / "truth.csv", index=False)
    rc = evaluate_main(NO_MODEL, ["--probs", str(tmp_path / "probs.csv"), "--truth", str(tmp_path / "truth.csv"),
                                  "--out", str(tmp_path / "ev")])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and f"patient 13, label C: {float(value)} is not a ground-truth label (0 or 1)" in line


def test_check_inputs_names_a_missing_label_and_a_nan_probability():
    y_true, y_prob = np.zeros((3, 8)), np.full((3, 8), 0.5)
    y_true[1, 4] = np.nan
    with pytest.raises(reports.ReportError, match=r"patient 21, label A: nan is not a ground-truth label \(0 or 1\)"):
        reports.check_inputs([20, 21, 22], y_true, y_prob)
    y_true[1, 4], y_prob[2, 7] = 0, np.nan
    with pytest.raises(reports.ReportError, match=r"patient 22, label O: nan is not a probability in \[0, 1\]"):
        reports.check_inputs([20, 21, 22], y_true, y_prob)


# 18: duplicate IDs in --batch ---------------------------------------------------------------------


@real
@pytest.mark.parametrize("ids, figures, expect", [
    (["p1", "p2", "p1"], False, "duplicate id p1 in rows 2, 4"),
    (["p1", "p2", "p1"], True, "duplicate id p1 in rows 2, 4"),
    (["a b", "a_b", "c"], True, "ids 'a b', 'a_b' in rows 2, 3 share the figure file a_b.png"),
])
def test_duplicate_ids_are_refused_before_predicting(torch_model, tmp_path, capsys, ids, figures, expect):
    pairs = [("1539_left.png", "1539_right.png"), ("32_left.png", "32_right.png"), ("177_left.png", "177_right.png")]
    pd.DataFrame({"id": ids, "left": [str(REAL_SAMPLES / l) for l, _ in pairs],
                  "right": [str(REAL_SAMPLES / r) for _, r in pairs]}).to_csv(tmp_path / "b.csv", index=False)
    rc = torch_predict(["--model", str(torch_model), "--batch", str(tmp_path / "b.csv"),
                        *(["--figures", str(tmp_path / "figs")] if figures else [])])
    captured = capsys.readouterr()
    line = _one_line(captured.err)
    assert rc == 2 and expect in line and str(tmp_path / "b.csv") in line
    assert "predicted" not in captured.out and sorted(p.name for p in tmp_path.iterdir()) == ["b.csv"]
