"""odir_core.data.audit: the report on the real file and on small hand-made files, and the CLI."""

import subprocess
import sys
from pathlib import Path

import openpyxl
import pandas as pd
import pytest

from odir_core.data.annotations import COLUMNS, read_annotations
from odir_core.data.audit import audit, main
from odir_core.labels import LABELS, SPECIAL_IMAGES
from reference_data import ANNOTATIONS as REAL_XLSX
from reference_data import require

REPO = Path(__file__).resolve().parents[1]


def row(pid, left_kw, right_kw, labels):
    return [pid, 60, "Female", f"{pid}_left.jpg", f"{pid}_right.jpg", left_kw, right_kw,
            *[int(label in labels) for label in LABELS]]


def small_file(tmp_path) -> Path:
    rows = [
        row(10, "normal fundus", "normal fundus", "N"),
        row(11, "glaucoma", "normal fundus", "N"),  # wrong: the rules say G
        row(12, "anterior segment image", "cataract", "C"),
        row(13, "lens dust", "normal fundus", "N"),
        row(14, "strange new finding", "normal fundus", "O"),
        row(15, "hypertensive retinopathy", "drusen", "HO"),
    ]
    path = tmp_path / "annotations.xlsx"
    pd.DataFrame(rows, columns=COLUMNS).to_excel(path, index=False)
    return path


def test_audit_small_file(tmp_path):
    result = audit(read_annotations(small_file(tmp_path)))
    assert result.patients == 6
    assert result.counts.to_dict() == {"N": 3, "D": 0, "G": 0, "C": 1, "A": 0, "H": 1, "M": 0, "O": 2}
    assert result.cooccurrence.loc["H", "O"] == 1 and result.cooccurrence.loc["O", "H"] == 1
    assert result.cooccurrence.loc["N", "O"] == 0
    assert result.ignored_eyes == [(12, "left", "anterior segment image")]
    assert result.non_decisive_eyes == [(13, "left", "lens dust")]
    assert result.unknown_keywords == {"strange new finding": 1}
    assert result.special == []
    assert result.normal_not_both_normal == [(13, "lens dust", "normal fundus")]
    d = result.disagreements
    assert d["ID"].tolist() == [11]
    assert d.iloc[0][["file", "rules", "left", "right"]].tolist() == ["N", "G", "glaucoma", "normal fundus"]


def test_audit_cli_small_file(tmp_path, capsys):
    assert main([str(small_file(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "patients: 6" in out
    assert "patients whose labels disagree with the keyword rules: 1" in out
    assert "ID 11: file N, rules G | left: glaucoma | right: normal fundus" in out
    assert "'strange new finding' (1 eyes)" in out


def test_audit_skips_rules_without_keywords(tmp_path):
    df = pd.DataFrame([row(1, "", "", "D")], columns=COLUMNS)
    path = tmp_path / "test set.csv"
    df.to_csv(path, index=False)
    assert audit(read_annotations(path)).disagreements.empty


@pytest.mark.parametrize("content", [None, "ID,N\n1,0\n"])
def test_audit_cli_bad_file(tmp_path, capsys, content):
    path = tmp_path / "annotations.csv"
    if content is not None:
        path.write_text(content)
    assert main([str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(path) in lines[0]


def test_audit_module_help_and_exit_code(tmp_path):
    help_run = subprocess.run(
        [sys.executable, "-m", "odir_core.audit", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert help_run.returncode == 0 and "--exclude-special" in help_run.stdout and "ANNOTATIONS" in help_run.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "odir_core.audit", str(tmp_path / "absent.xlsx")],
        cwd=REPO, capture_output=True, text=True,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "absent.xlsx" in bad.stderr


@pytest.fixture(scope="module")
def real_sheet():
    require(REAL_XLSX)
    rows = list(openpyxl.load_workbook(REAL_XLSX, read_only=True).active.iter_rows(values_only=True))
    return pd.DataFrame(rows[1:], columns=rows[0])


def test_audit_real_file(real_sheet, capsys):
    assert main([str(REAL_XLSX)]) == 0
    out = capsys.readouterr().out
    assert "patients: 3500" in out
    assert "N Normal                              1140   32.6%" in out
    assert "special images present (hospital-preprocessed): 16" in out
    assert all(name in out for name in SPECIAL_IMAGES)
    assert "ignored eyes (not a fundus image of that eye): 3" in out
    assert "ID 4580 left: no fundus image" in out
    assert "keywords not in the keyword table (counted as O): 0" in out
    assert "patients whose labels disagree with the keyword rules: 0" in out
    assert "patients labelled N without two 'normal fundus' eyes (rule 2 read literally would not say N): 4" in out

    result = audit(read_annotations(REAL_XLSX, exclude_special=False))
    y = real_sheet[list(LABELS)].astype(int)
    for a in LABELS:  # co-occurrence against pandas on the raw sheet
        for b in LABELS:
            assert result.cooccurrence.loc[a, b] == int((y[a] & y[b]).sum()), (a, b)
    # eyes whose keywords are only non-decisive, counted on the raw cells
    non_decisive = {"lens dust", "optic disk photographically invisible", "low image quality", "image offset"}
    expected = sum(
        set(str(cell).replace(",", "，").split("，")) <= non_decisive
        for col in ("Left-Diagnostic Keywords", "Right-Diagnostic Keywords")
        for cell in real_sheet[col]
    )
    assert len(result.non_decisive_eyes) == expected == 27
    # N patients with an eye whose decisive keywords are not just "normal fundus", on the raw cells
    literal = [
        int(r["ID"])
        for _, r in real_sheet.iterrows()
        if r["N"] == 1
        and any(
            {k.strip() for k in str(cell).replace(",", "，").split("，")} - non_decisive != {"normal fundus"}
            for cell in (r["Left-Diagnostic Keywords"], r["Right-Diagnostic Keywords"])
        )
    ]
    assert [pid for pid, _, _ in result.normal_not_both_normal] == literal == [3265, 3402, 4149, 4290]

    kept = audit(read_annotations(REAL_XLSX))
    assert kept.patients == 3490 and kept.special == []
