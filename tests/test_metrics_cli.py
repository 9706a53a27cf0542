"""python -m odir_core.metrics (odir_core.evaluation.metrics_cli): the report, its flags, one line per bad input."""

import subprocess
import sys
from pathlib import Path

import pytest

from label_frames import label_frames
from odir_core.evaluation.metrics_cli import main
from odir_core.labels import LABELS
from odir_core.scores import challenge_metrics
from reference_data import EXPERIMENTS, require

REPO = Path(__file__).resolve().parents[1]


def test_cli_experiment_15(capsys):
    require(EXPERIMENTS / "experiment_15" / "probs.xlsx")
    folder = EXPERIMENTS / "experiment_15"
    assert main([str(folder / "ground_truth.xlsx"), str(folder / "probs.xlsx")]) == 0
    out = capsys.readouterr().out
    assert "0.6014981085268922" in out and "0.8078548208001156" in out  # official kappa and final
    assert "0.7071414010255999" in out  # the study's final on these probabilities (0.707141 in the csv)
    weighted = next(line for line in out.splitlines() if line.strip().startswith("weighted avg")).split()
    assert weighted[2:5] == ["0.64", "0.71", "0.67"] and weighted[-1] == "824"


def test_cli_bad_input_exit_code_and_one_line(tmp_path):
    gt, sub = label_frames()
    gt.to_csv(tmp_path / "gt.csv", index=False)
    sub.iloc[::-1].to_csv(tmp_path / "sub.csv", index=False)
    result = subprocess.run(
        [sys.executable, "-m", "odir_core.metrics", str(tmp_path / "gt.csv"), str(tmp_path / "sub.csv")],
        capture_output=True, text=True, cwd=REPO,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "rows in the wrong order" in result.stderr
    assert result.stdout == ""


def test_cli_align_and_threshold(tmp_path, capsys):
    gt, sub = label_frames()
    gt.to_csv(tmp_path / "gt.csv", index=False)
    sub.iloc[::-1][["ID", *reversed(LABELS)]].to_csv(tmp_path / "sub.csv", index=False)
    assert main([str(tmp_path / "gt.csv"), str(tmp_path / "sub.csv"), "--align", "--threshold", "0.3"]) == 0
    out = capsys.readouterr().out
    expected = challenge_metrics(gt[list(LABELS)], sub[list(LABELS)], threshold=0.3)
    assert f"{expected['final']:.16f}" in out and out.startswith("threshold 0.3,")
    assert main([str(tmp_path / "gt.csv"), str(tmp_path / "missing.csv")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_cli_help_explains_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--threshold" in out and "--align" in out and "GROUND_TRUTH" in out.upper()


def test_cli_names_bad_cells_of_either_file(tmp_path, capsys):
    gt, sub = label_frames()
    gt.loc[3, "A"] = 2
    gt.to_csv(tmp_path / "gt.csv", index=False)
    sub.to_csv(tmp_path / "sub.csv", index=False)
    assert main([str(tmp_path / "gt.csv"), str(tmp_path / "sub.csv")]) == 2
    assert "gt.csv: 1 value(s) are not 0/1 labels at row 5 column A" in capsys.readouterr().err
    gt.loc[3, "A"] = 1
    gt.to_csv(tmp_path / "gt.csv", index=False)
    sub.loc[0, "M"] = -0.1
    sub.iloc[::-1].to_csv(tmp_path / "sub.csv", index=False)
    assert main([str(tmp_path / "gt.csv"), str(tmp_path / "sub.csv"), "--align"]) == 2
    assert "sub.csv: 1 value(s) are not probabilities in [0, 1] at row 7 column M" in capsys.readouterr().err


def test_cli_warnings_and_errors_carry_this_command_name(tmp_path, capsys):
    gt, sub = label_frames()
    gt["H"] = 0  # no patient with H: its ROC AUC is undefined
    gt.to_csv(tmp_path / "gt.csv", index=False)
    sub.to_csv(tmp_path / "sub.csv", index=False)
    assert main([str(tmp_path / "gt.csv"), str(tmp_path / "sub.csv")]) == 0
    warned = capsys.readouterr().err.splitlines()
    assert warned and all(line.startswith("odir_core.metrics: warning: ") for line in warned)
    assert any("ROC AUC is undefined for label(s) H" in line for line in warned)
    assert main([str(tmp_path / "gt.csv"), str(tmp_path / "missing.csv")]) == 2
    assert capsys.readouterr().err.startswith("odir_core.metrics: error: ")
