"""Files as data: image names from annotations stay in the image folder, text never becomes a spreadsheet
formula, patient IDs that do not fit are one clear error, and ``prepare`` survives link loops, a foreign
report in its output and an output folder that is its source.

References: the file system (what exists, what was read, bytes before and after), openpyxl's cell types,
Python's csv module and hand-written values.
"""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import openpyxl
import pandas as pd
import pytest

from odir_core.data.annotations import AnnotationError, read_annotations, write_annotations
from odir_core.data.audit import main as audit_main
from odir_core.data.dataset import DualEyeDataset
from odir_core.data.layouts import GRAND_CHALLENGE
from odir_core.data.prepare import main as prepare_main
from odir_core.data.synthetic import generate
from odir_core.errors import InputError
from odir_core.labels import LABELS

PATIENTS = 4
FORMULA_LIKE = ['=HYPERLINK("http://example.invalid/x","click")', "+1+1", "-2+3", "@SUM(1)"]


@pytest.fixture(scope="module")
def prepared_folder(tmp_path_factory) -> Path:
    """A synthetic prepared folder of 4 patients at 32 px, generated once; copy it before changing it."""
    return generate(tmp_path_factory.mktemp("files") / "prepared", PATIENTS, size=32, seed=0, workers=1)


@pytest.fixture
def data(prepared_folder, tmp_path) -> Path:
    """A copy of the prepared folder for one test."""
    return Path(shutil.copytree(prepared_folder, tmp_path / "data"))


def _set_cells(path: Path, cells: dict[tuple[int, str], object]) -> None:
    """Write ``cells`` ((row index, column name) -> value) into an annotations xlsx, text values as text cells."""
    wb = openpyxl.load_workbook(path)
    ws = wb.active
    header = [c.value for c in ws[1]]
    for (row, column), value in cells.items():
        cell = ws.cell(row=row + 2, column=header.index(column) + 1)
        cell.value = value
        if isinstance(value, str):
            cell.data_type = "s"  # as typed into a spreadsheet cell formatted as text
    wb.save(path)


def _prepare(source, out, *extra) -> int:
    return prepare_main(["--source", str(source), "--out", str(out), "--size", "32", "--workers", "1", *extra])


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if "error: " in line]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# --- 4. image names stay inside the image folder ---------------------------------------------------

ESCAPING_NAMES = ["../../secret.jpg", "/tmp/secret.jpg", "sub/../../secret.jpg", "..\\secret.jpg", "..", "C:secret.jpg"]


@pytest.mark.parametrize("name", ESCAPING_NAMES)
def test_read_annotations_refuses_image_names_outside_the_image_folder(data, name):
    _set_cells(data / "annotations.xlsx", {(1, "Right-Fundus"): name})
    with pytest.raises(AnnotationError) as info:
        read_annotations(data / "annotations.xlsx")
    message = str(info.value)
    assert f"{data / 'annotations.xlsx'}: row 3, column 'Right-Fundus'" in message
    assert repr(name) in message and "0_left.jpg" in message  # the value and an example of a good one


def test_audit_and_prepare_refuse_a_path_in_the_annotations(data, tmp_path, capsys):
    secret = tmp_path / "secret.jpg"
    shutil.copy(data / "images" / "0_left.jpg", secret)
    _set_cells(data / "annotations.xlsx", {(0, "Left-Fundus"): str(secret)})
    assert audit_main([str(data / "annotations.xlsx")]) == 2
    assert "row 2, column 'Left-Fundus'" in _one_error_line(capsys.readouterr().err)
    assert _prepare(data, tmp_path / "out") == 2
    assert "row 2, column 'Left-Fundus'" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_dataset_never_opens_a_file_outside_the_image_folder(data, tmp_path):
    """A table built by other code than read_annotations is checked too, before any image is read; plain names
    still reach their files through an image folder that is a link to another disk."""
    secret = tmp_path / "secret.jpg"
    shutil.copy(data / "images" / "0_left.jpg", secret)
    frame = read_annotations(data / "annotations.xlsx")
    (tmp_path / "elsewhere").mkdir()
    moved = shutil.move(str(data / "images"), str(tmp_path / "elsewhere" / "images"))
    (data / "images").symlink_to(moved, target_is_directory=True)
    assert DualEyeDataset(data, frame, image_size=32, train=False).image(0, 0).shape == (32, 32, 3)
    frame.loc[0, "Left-Fundus"] = "../../secret.jpg"
    assert (tmp_path / "elsewhere" / "images" / "../../secret.jpg").resolve() == secret  # reachable by the name
    with pytest.raises(InputError, match=r"patient 0, column 'Left-Fundus': '\.\./\.\./secret\.jpg'"):
        DualEyeDataset(data, frame, image_size=32, train=False)


def test_evaluate_refuses_a_path_in_the_annotations_of_data(data, tmp_path, capsys):
    from keras_odir.evaluate import main as evaluate_main

    _set_cells(data / "annotations.xlsx", {(2, "Left-Fundus"): "../annotations.xlsx"})
    probs = pd.DataFrame({"ID": range(PATIENTS), **{label: 0.5 for label in LABELS}})
    probs.to_csv(tmp_path / "probs.csv", index=False)
    assert evaluate_main(["--probs", str(tmp_path / "probs.csv"), "--data", str(data), "--out", str(tmp_path / "ev")]) == 2
    assert "row 4, column 'Left-Fundus'" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "ev").exists()


def _grand_challenge(tmp_path: Path, cells: dict) -> Path:
    source = generate(tmp_path / "gc", 3, size=96, seed=1, layout="grand-challenge", workers=1)
    annotations = source / GRAND_CHALLENGE.annotations
    _set_cells(annotations, cells)
    return source


def _tfds_build(source: Path, data_dir: Path) -> int:
    pytest.importorskip("tensorflow_datasets", reason="needs the optional tfds extra (tensorflow-datasets)")
    from odir_core.data.tfds.cli import main as tfds_main

    return tfds_main(["build", "--source", str(source), "--variant", "prepared_32", "--data-dir", str(data_dir),
                      "--workers", "1"])


def test_tfds_build_refuses_a_path_in_the_annotations(tmp_path, capsys):
    source = _grand_challenge(tmp_path, {(1, "Right-Fundus"): "../gc/ODIR-5K_Training_Dataset/0_right.jpg"})
    assert _tfds_build(source, tmp_path / "tfds") == 2
    assert "row 3, column 'Right-Fundus'" in _one_error_line(capsys.readouterr().err)


# --- 5. text cells are never formulas --------------------------------------------------------------


def _formula_keywords(path: Path) -> None:
    _set_cells(path, {(i, "Left-Diagnostic Keywords"): text for i, text in enumerate(FORMULA_LIKE)})


def test_prepare_writes_formula_like_keywords_as_text(data, tmp_path):
    _formula_keywords(data / "annotations.xlsx")
    before = read_annotations(data / "annotations.xlsx")
    assert _prepare(data, tmp_path / "out") == 0
    ws = openpyxl.load_workbook(tmp_path / "out" / "annotations.xlsx").active
    types = {c.value: c.data_type for row in ws.iter_rows() for c in row if isinstance(c.value, str)}
    written = [types[text] for text in before["Left-Diagnostic Keywords"]]
    assert written == ["s"] * len(FORMULA_LIKE)
    assert "f" not in types.values()
    after = read_annotations(tmp_path / "out" / "annotations.xlsx")
    assert after["Left-Diagnostic Keywords"].tolist() == before["Left-Diagnostic Keywords"].tolist()
    assert after["Left-Diagnostic Keywords"].iloc[0].startswith('=hyperlink("http://example.invalid/x"')


def test_every_xlsx_writer_stores_text_as_text(tmp_path):
    from odir_core.spreadsheets import write_xlsx

    frame = pd.DataFrame({"text": FORMULA_LIKE, "number": [-1.5, 2, 3, 4]})
    write_xlsx(frame, tmp_path / "t.xlsx", index=False)
    cells = [c for row in openpyxl.load_workbook(tmp_path / "t.xlsx").active.iter_rows(min_row=2) for c in row]
    assert [c.data_type for c in cells] == ["s", "n"] * len(FORMULA_LIKE)
    pd.testing.assert_frame_equal(pd.read_excel(tmp_path / "t.xlsx"), frame)


def _csv_fields(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        return [field for row in csv.reader(f) for field in row]


def test_annotations_csv_keeps_formula_like_text_inert_and_reads_it_back_unchanged(data, tmp_path):
    df = read_annotations(data / "annotations.xlsx")
    keywords = ['=hyperlink("http://example.invalid/x")', "+1+1", "-2+3", "'=already quoted"]
    df["Left-Diagnostic Keywords"] = keywords
    write_annotations(df, tmp_path / "a.csv")
    fields = _csv_fields(tmp_path / "a.csv")
    assert not [f for f in fields if f[:1] in ("=", "+", "-", "@")]  # no cell a spreadsheet would run
    assert "'" + keywords[0] in fields and "''=already quoted" in fields
    assert read_annotations(tmp_path / "a.csv")["Left-Diagnostic Keywords"].tolist() == keywords


def test_prepare_report_names_formula_like_files_inertly_and_keeps_them_on_rerun(data, tmp_path, capsys):
    _set_cells(data / "annotations.xlsx", {(1, "Left-Fundus"): "=1+2.jpg"})
    out = tmp_path / "out"
    assert _prepare(data, out) == 0
    fields = _csv_fields(out / "prepare_report.csv")
    assert "'=1+2.jpg" in fields and not [f for f in fields if f[:1] in ("=", "+", "-", "@")]
    report = (out / "prepare_report.csv").read_bytes()
    assert _prepare(data, out) == 0
    assert (out / "prepare_report.csv").read_bytes() == report  # read back unchanged, not quoted twice


# --- 10. a link loop under --source ----------------------------------------------------------------


def test_prepare_follows_links_but_not_round_a_link_loop(data, tmp_path):
    for name in "abc":  # three links back to the top: an endless, branching walk
        os.symlink(data, data / "images" / name, target_is_directory=True)
    command = [sys.executable, "-m", "odir_core.prepare", "--source", str(data), "--out", str(tmp_path / "out"),
               "--size", "32", "--workers", "1"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert read_annotations(tmp_path / "out" / "annotations.xlsx")["ID"].tolist() == list(range(PATIENTS))


# --- 11. a foreign prepare_report.csv in --out -----------------------------------------------------

FOREIGN = {
    "another tool's": "file,result\nx.jpg,fine\n",
    "non-integer IDs": "ID,side,source,status,reason\nabc,left,x.jpg,error,bad\n",
    "not csv": '"unterminated\nID,side\n\x00\x01',
}


@pytest.mark.parametrize("content", list(FOREIGN.values()), ids=list(FOREIGN))
def test_prepare_sets_a_foreign_report_aside_and_finishes(data, tmp_path, capsys, content):
    out = tmp_path / "out"
    out.mkdir()
    (out / "prepare_report.csv").write_text(content)
    assert _prepare(data, out) == 0
    printed = capsys.readouterr().out
    aside = [p for p in out.iterdir() if p.name.startswith("prepare_report.csv.foreign-")]
    assert len(aside) == 1 and aside[0].read_text() == content
    assert f"{out / 'prepare_report.csv'}" in printed and aside[0].name in printed
    assert read_annotations(out / "annotations.xlsx")["ID"].tolist() == list(range(PATIENTS))
    assert pd.read_csv(out / "prepare_report.csv").columns.tolist() == ["ID", "side", "source", "status", "reason"]


# --- 16. --out inside --source ----------------------------------------------------------------------


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_prepare_refuses_an_output_folder_that_is_or_is_inside_its_source(data, tmp_path, capsys):
    before = _tree(data)
    linked = tmp_path / "linked"
    linked.symlink_to(data, target_is_directory=True)
    for out in (data, data / "prepared", linked / "sub", data / "images"):
        assert _prepare(data, out) == 2, out
        line = _one_error_line(capsys.readouterr().err)
        assert str(out) in line and "--out" in line
        assert _tree(data) == before and not (data / "prepared").exists()
    assert _prepare(data, tmp_path) == 0  # a folder that holds the source is fine: the source is only read
    assert _tree(data) == before
    assert read_annotations(tmp_path / "annotations.xlsx")["ID"].tolist() == list(range(PATIENTS))
    (tmp_path / "o").mkdir()
    source = Path(shutil.move(str(data), str(tmp_path / "o" / "images")))  # --out's image folder
    assert _prepare(source, tmp_path / "o") == 2
    assert "--out" in _one_error_line(capsys.readouterr().err)
    assert _tree(source) == before


# --- 13b. patient IDs that do not fit --------------------------------------------------------------

HUGE_IDS = ["1e30", "99999999999999999999", str(2**63), str(-(2**63) - 1)]


@pytest.mark.parametrize("pid", HUGE_IDS)
def test_ids_beyond_64_bits_are_one_error_naming_the_row(data, tmp_path, capsys, pid):
    _set_cells(data / "annotations.xlsx", {(2, "ID"): pid})
    with pytest.raises(AnnotationError, match=rf"row 4, column 'ID': got {pid!r}.*2\*\*63"):
        read_annotations(data / "annotations.xlsx")
    assert audit_main([str(data / "annotations.xlsx")]) == 2
    assert "row 4, column 'ID'" in _one_error_line(capsys.readouterr().err)
    assert _prepare(data, tmp_path / "out") == 2
    assert "row 4, column 'ID'" in _one_error_line(capsys.readouterr().err)


def test_large_ids_are_read_exactly(data):
    ids = [2**63 - 1, 9007199254740993, -(2**63), 3]  # 2**53 + 1: a float would round it
    _set_cells(data / "annotations.xlsx", {(i, "ID"): str(pid) for i, pid in enumerate(ids)})
    assert read_annotations(data / "annotations.xlsx")["ID"].tolist() == ids


def test_tfds_build_refuses_an_id_its_records_cannot_hold(tmp_path, capsys):
    source = _grand_challenge(tmp_path, {(1, "ID"): 2**31})
    assert _tfds_build(source, tmp_path / "tfds") == 2
    line = _one_error_line(capsys.readouterr().err)
    assert GRAND_CHALLENGE.annotations in line and "row 3" in line and str(2**31) in line
