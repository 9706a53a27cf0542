"""odir_core.data.prepare end to end on small ODIR-like distributions, and layout detection."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from fundus_images import draw_fundus, noise_image, write_jpeg, zero_middle_of_scan

from odir_core.data.annotations import read_annotations
from odir_core.data.layouts import (
    GRAND_CHALLENGE,
    KAGGLE,
    OIA,
    PREPARED,
    LayoutError,
    detect_layout,
)
from odir_core.data.prepare import main
from odir_core.data.synthetic import generate

LAYOUTS = {"grand-challenge": GRAND_CHALLENGE, "kaggle": KAGGLE, "oia": OIA, "oia-underscores": OIA}


def make_source(root: Path, layout: str) -> Path:
    """A generated raw distribution of 4 patients, patient 2's left JPEG truncated, patient 3's right missing."""
    generate(root, 4, size=96, seed=0, layout=layout.removesuffix("-underscores"), workers=1)
    images = root / LAYOUTS[layout].images
    if layout.endswith("-underscores"):  # a mirror that replaced spaces by underscores
        for path in sorted(root.rglob("* *"), key=lambda p: -len(p.parts)):
            path.rename(path.with_name(path.name.replace(" ", "_")))
        images = root / LAYOUTS[layout].images.replace(" ", "_")
    bad = images / "2_left.jpg"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    (images / "3_right.jpg").unlink()
    return root


def run(source, out, *extra):
    return main(["--source", str(source), "--out", str(out), "--size", "32", "--workers", "1", *extra])


def check_output(out: Path, ext: str = "png"):
    df = read_annotations(out / "annotations.xlsx", exclude_special=False)
    assert df["ID"].tolist() == [0, 1]
    assert df["Left-Fundus"].tolist() == [f"0_left.{ext}", f"1_left.{ext}"]
    for name in df["Left-Fundus"].tolist() + df["Right-Fundus"].tolist():
        img = cv2.imread(str(out / "images" / name))
        assert img.shape == (32, 32, 3)
    report = pd.read_csv(out / "prepare_report.csv")
    errors = report[report["status"] == "error"]
    assert list(zip(errors["ID"], errors["side"])) == [(2, "left"), (3, "right")]
    reasons = errors.set_index("ID")["reason"]
    assert "truncated JPEG" in reasons[2] and "missing" in reasons[3]


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_prepare_each_layout_reports_bad_and_missing_images(tmp_path, layout, capsys):
    src = make_source(tmp_path / "src", layout)
    out = tmp_path / "out"
    assert run(src, out) == 0
    printed = capsys.readouterr().out
    assert f"found the {layout.split('-underscores')[0]} layout" in printed
    check_output(out)


def test_prepare_zip_with_wrapping_folder_and_pool_then_rerun_is_a_noop(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    src = make_source(tmp_path / "src" / "odir5k", "kaggle")
    archive = tmp_path / "odir.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for f in sorted(src.rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(tmp_path / "src").as_posix())
    shutil.rmtree(tmp_path / "src")
    out = tmp_path / "out"
    assert main(["--source", str(archive), "--out", str(out), "--size", "32", "--workers", "2",
                 "--format", "jpg", "--quality", "90"]) == 0
    check_output(out, "jpg")
    images = sorted((out / "images").iterdir())
    mtimes = {p.name: p.stat().st_mtime_ns for p in images}
    assert len(images) == 6  # 2_right and 3_left were written too; their patients are left out
    report = (out / "prepare_report.csv").read_text()
    capsys.readouterr()

    assert main(["--source", str(archive), "--out", str(out), "--size", "32", "--format", "jpg"]) == 0
    printed = capsys.readouterr().out
    assert "6 images already prepared, 1 to prepare, 1 missing" in printed  # the bad JPEG is retried
    assert {p.name: p.stat().st_mtime_ns for p in sorted((out / "images").iterdir())} == mtimes
    assert (out / "prepare_report.csv").read_text() == report
    check_output(out, "jpg")
    assert main(["--source", str(archive), "--out", str(out), "--size", "48", "--format", "jpg"]) == 2
    assert "holds 32x32 images" in capsys.readouterr().err


def test_prepare_reads_a_generated_zip_in_place(tmp_path):
    archive = generate(tmp_path / "oia", 3, size=96, seed=1, layout="oia", zip=True, workers=1)
    out = tmp_path / "out"
    assert run(archive, out, "--size", "40") == 0
    df = read_annotations(out / "annotations.xlsx", exclude_special=False)
    assert df["ID"].tolist() == [0, 1, 2]
    assert all(cv2.imread(str(out / "images" / n)).shape == (40, 40, 3) for n in df["Right-Fundus"])


def test_prepare_follows_a_symlinked_image_folder(tmp_path):
    """Photographs often live on another disk, linked into the dataset folder."""
    source = generate(tmp_path / "gc", 3, size=96, seed=1, layout="grand-challenge", workers=1)
    images = next(p for p in source.rglob("*") if p.is_dir() and any(p.glob("*.jpg")))
    moved = shutil.move(str(images), str(tmp_path / "elsewhere"))
    images.symlink_to(moved, target_is_directory=True)
    out = tmp_path / "out"
    assert run(source, out, "--size", "40") == 0
    assert read_annotations(out / "annotations.xlsx", exclude_special=False)["ID"].tolist() == [0, 1, 2]


def test_prepare_reports_black_and_repaired_white_surround_images(tmp_path):
    src = generate(tmp_path / "src", 2, size=96, seed=0, layout="grand-challenge", workers=1)
    folder = src / GRAND_CHALLENGE.images
    write_jpeg(folder / "0_right.jpg", np.zeros((60, 80, 3), np.uint8))
    fundus = draw_fundus(72, 96, seed=9)
    fundus[fundus.max(axis=2) == 0] = 255
    write_jpeg(folder / "1_left.jpg", fundus)
    out = tmp_path / "out"
    assert run(src, out) == 0
    report = pd.read_csv(out / "prepare_report.csv").set_index(["ID", "side"])
    assert report.loc[(0, "right"), "status"] == "error" and "black" in report.loc[(0, "right"), "reason"]
    assert report.loc[(1, "left"), "status"] == "repaired"
    assert "white surround" in report.loc[(1, "left"), "reason"]
    assert read_annotations(out / "annotations.xlsx")["ID"].tolist() == [1]
    white_fixed = cv2.imread(str(out / "images" / "1_left.png"))
    assert white_fixed[0, 0].max() <= 7 and white_fixed[-1, -1].max() <= 7


def test_prepare_skips_non_fundus_and_corrupt_images_unless_kept(tmp_path, capsys):
    src = generate(tmp_path / "src", 3, size=160, seed=0, layout="grand-challenge", workers=1)
    folder = src / GRAND_CHALLENGE.images
    write_jpeg(folder / "0_right.jpg", noise_image(120, 160))
    damaged = folder / "1_left.jpg"
    damaged.write_bytes(zero_middle_of_scan(damaged.read_bytes()))  # end marker intact

    out = tmp_path / "out"
    assert run(src, out) == 0
    report = pd.read_csv(out / "prepare_report.csv").set_index(["ID", "side"])
    assert report.loc[(0, "right"), "status"] == "error"
    reason = report.loc[(0, "right"), "reason"]
    assert report.loc[(0, "right"), "source"].endswith("0_right.jpg")
    assert reason.startswith("not a fundus photograph: no dark surround") and "--keep-non-fundus" in reason
    assert report.loc[(1, "left"), "status"] == "error" and "corrupt JPEG" in report.loc[(1, "left"), "reason"]
    assert report.loc[(1, "left"), "source"].endswith("1_left.jpg")
    assert read_annotations(out / "annotations.xlsx")["ID"].tolist() == [2]
    assert "1 of 3 patients written" in capsys.readouterr().out

    kept = tmp_path / "kept"
    assert run(src, kept, "--keep-non-fundus") == 0
    report = pd.read_csv(kept / "prepare_report.csv").set_index(["ID", "side"])
    assert report.loc[(0, "right"), "status"] == "repaired"
    assert report.loc[(0, "right"), "reason"].startswith("kept although not like a fundus photograph")
    assert report.loc[(1, "left"), "status"] == "error"  # corrupt files are never kept
    assert read_annotations(kept / "annotations.xlsx")["ID"].tolist() == [0, 2]


def test_prepare_cli_errors_are_one_clear_line(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    assert run(tmp_path / "empty", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert "no known ODIR-5K layout" in err and "Training Set/Images" in err
    assert run(tmp_path / "nowhere", tmp_path / "out") == 2
    assert "does not exist" in capsys.readouterr().err


def test_prepare_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for flag in ("--source", "--out", "--size", "--format", "--quality", "--workers", "--tol", "--exclude-special",
                 "--keep-non-fundus"):
        assert flag in text


def test_detect_layout_tolerates_wrapping_folder_case_and_underscores():
    found = detect_layout(["dl/odir-5k/odir-5k/DATA.xlsx", "dl/odir-5k/odir-5k/Training_Images/1_left.jpg"])
    assert found.layout is KAGGLE and found.root == "dl"
    assert found.images == "dl/odir-5k/odir-5k/Training_Images"
    found = detect_layout(
        ["OIA-ODIR\\Training Set\\Annotation\\training annotation (English).xlsx", "OIA-ODIR\\Training Set\\Images\\0_left.jpg"]
    )
    assert found.layout is OIA and found.annotations.startswith("OIA-ODIR/Training Set/")
    found = detect_layout([GRAND_CHALLENGE.annotations, GRAND_CHALLENGE.images + "/0_left.jpg"])
    assert found.layout is GRAND_CHALLENGE and found.root == ""
    assert detect_layout(["p/annotations.xlsx", "p/images/0_left.png"]).layout is PREPARED


def test_detect_layout_needs_images_and_lists_what_it_expected():
    with pytest.raises(LayoutError) as info:
        detect_layout(["ODIR-5K/ODIR-5K/data.xlsx"])  # no Training Images folder
    message = str(info.value)
    for layout in (GRAND_CHALLENGE, KAGGLE, OIA, PREPARED):
        assert layout.annotations in message
    assert "Found at the top: ODIR-5K" in message
