"""Tests of the synthetic ODIR-5K-like generator: layouts, annotations, statistics, determinism, images."""

from __future__ import annotations

import zipfile

import cv2
import numpy as np
import pandas as pd
import pytest

from odir_core.data import synthetic
from odir_core.data.annotations import COLUMNS, PER_IMAGE_COLUMNS, read_annotations
from odir_core.data.keywords import KEYWORD_SEPARATOR, eye_labels, patient_labels
from odir_core.data.layouts import GRAND_CHALLENGE, KAGGLE, OIA, PREPARED
from odir_core.data.preprocess import preprocess_fundus
from odir_core.labels import LABELS, SPECIAL_IMAGES
from reference_data import ANNOTATIONS, needs

# Published positive counts of the 3500 ODIR-5K training patients (reference README).
PUBLISHED_COUNTS = {"N": 1140, "D": 1128, "G": 215, "C": 212, "A": 164, "H": 103, "M": 174, "O": 979}


def _read_rgb(path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert img is not None, path
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return synthetic.sample_annotations(3500, seed=3)


# ----------------------------------------------------------------------------- labels and keywords

def test_prevalence_matches_published_counts(table):
    # tolerance 0.025 absolute: > 3 binomial SDs at n=3500 for every label (largest SD 0.008)
    for lab, count in PUBLISHED_COUNTS.items():
        assert abs(table[lab].mean() - count / 3500) < 0.025, lab


@needs(ANNOTATIONS)
def test_cooccurrence_and_laterality_match_real_annotations(table):
    real = pd.read_excel(ANNOTATIONS)
    for lab, count in PUBLISHED_COUNTS.items():
        assert real[lab].sum() == count
    # the baked-in statistics are the real file's
    combos = real[list(LABELS)].astype(str).agg("".join, axis=1).value_counts().to_dict()
    assert combos == synthetic.LABEL_COMBINATIONS
    cells = pd.concat([real["Left-Diagnostic Keywords"], real["Right-Diagnostic Keywords"]])
    counts = cells.str.split(KEYWORD_SEPARATOR).explode().str.strip().value_counts()
    for lab, table_ in synthetic.KEYWORDS.items():
        assert {k: counts[k] for k in table_} == table_, lab
    for lab in ("C", "A", "G"):
        assert abs(real.loc[real[lab] == 1, "Patient Age"].mean() - table.loc[table[lab] == 1, "Patient Age"].mean()) < 3
    y_real, y_syn = real[list(LABELS)].to_numpy(), table[list(LABELS)].to_numpy()
    co_real, co_syn = (y_real.T @ y_real) / len(real), (y_syn.T @ y_syn) / len(table)
    assert np.abs(co_real - co_syn).max() < 0.025
    # bilateral findings: share of D patients with a D keyword in both eyes
    def both_eyes(df, lab):
        rows = df[df[lab] == 1]
        left = np.stack([eye_labels(k) for k in rows["Left-Diagnostic Keywords"]])[:, LABELS.index(lab)]
        right = np.stack([eye_labels(k) for k in rows["Right-Diagnostic Keywords"]])[:, LABELS.index(lab)]
        return (left & right).mean()
    for lab in ("D", "A", "O"):
        assert abs(both_eyes(real, lab) - both_eyes(table, lab)) < 0.06, lab
    # keyword share of "lens dust" over all eyes
    def dust(df):
        cells = pd.concat([df["Left-Diagnostic Keywords"], df["Right-Diagnostic Keywords"]])
        return cells.str.contains("lens dust").mean()
    assert abs(dust(real) - dust(table)) < 0.015


def test_labels_follow_dataset_rules(table):
    for row in table.itertuples(index=False):
        left, right = row[5], row[6]
        assert "," not in left and "," not in right  # full-width separator only
        y = np.array(row[7:15])
        np.testing.assert_array_equal(y, patient_labels(left, right))
        decisive = [k for cell in (left, right) for k in cell.split(KEYWORD_SEPARATOR)
                    if k not in ("lens dust", "low image quality")]
        assert y[0] == int(all(k == "normal fundus" for k in decisive))  # N only when both eyes are normal
        assert y.sum() >= 1


def test_age_and_sex_correlate_like_the_real_set(table):
    cataract, normal = table[table["C"] == 1], table[table["N"] == 1]
    assert cataract["Patient Age"].mean() - normal["Patient Age"].mean() > 5
    assert table["Patient Age"].between(1, 91).all()
    assert set(table["Patient Sex"]) == {"Male", "Female"}


def test_patient_is_independent_of_dataset_size():
    small, large = synthetic.sample_annotations(5, seed=11), synthetic.sample_annotations(40, seed=11)
    pd.testing.assert_frame_equal(small, large.iloc[:5])
    assert not synthetic.sample_annotations(5, seed=12).equals(small)


# ----------------------------------------------------------------------------- generated folders

def test_prepared_folder_is_deterministic_and_valid(tmp_path):
    a = synthetic.generate(tmp_path / "a", 3, size=48, seed=5, workers=1)
    b = synthetic.generate(tmp_path / "b", 3, size=48, seed=5, workers=1)
    c = synthetic.generate(tmp_path / "c", 5, size=48, seed=5, workers=1)
    d = synthetic.generate(tmp_path / "d", 3, size=48, seed=6, workers=1)
    names = sorted(p.name for p in (a / PREPARED.images).iterdir())
    assert names == sorted(f"{i}_{s}.jpg" for i in range(3) for s in ("left", "right"))
    for name in names:
        data = (a / PREPARED.images / name).read_bytes()
        assert data == (b / PREPARED.images / name).read_bytes()
        assert data == (c / PREPARED.images / name).read_bytes()  # patient k does not depend on N
        assert data != (d / PREPARED.images / name).read_bytes()
    df = read_annotations(a / PREPARED.annotations)
    assert list(df.columns) == COLUMNS and df["ID"].tolist() == [0, 1, 2]
    pd.testing.assert_frame_equal(df, read_annotations(c / PREPARED.annotations).iloc[:3])
    report = pd.read_csv(a / "prepare_report.csv")
    assert list(report.columns) == ["ID", "side", "source", "status", "reason"] and report.empty
    img = _read_rgb(a / PREPARED.images / "0_left.jpg")
    assert img.shape == (48, 48, 3)
    assert img[:2, :2].max() < 20 and img[-2:, -2:].max() < 20  # black corners
    mid = img[24].max(axis=1)
    assert mid[0] > 20 and mid[-1] > 20 or mid[1] > 20 and mid[-2] > 20  # circle touches the sides
    assert img[20:28, 20:28].mean() > 30


def test_parallel_workers_give_the_same_bytes(tmp_path):
    a = synthetic.generate(tmp_path / "a", 4, size=32, seed=1, workers=1)
    b = synthetic.generate(tmp_path / "b", 4, size=32, seed=1, workers=2)
    for p in (a / "images").iterdir():
        assert p.read_bytes() == (b / "images" / p.name).read_bytes()


def test_refuses_to_overwrite(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError):
        synthetic.generate(tmp_path / "x", 2, size=32, workers=1)
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="layout"):
        synthetic.generate(tmp_path / "y", 2, layout="nope")
    with pytest.raises(ValueError, match="oia"):
        synthetic.generate(tmp_path / "y", 2, layout="kaggle", test_patients=1)
    with pytest.raises(ValueError, match="at least 64"):
        synthetic.generate(tmp_path / "y", 2, size=32, layout="kaggle")
    assert not (tmp_path / "y").exists()


@pytest.mark.parametrize("layout", [GRAND_CHALLENGE, KAGGLE, OIA])
def test_raw_layouts(tmp_path, layout):
    root = synthetic.generate(tmp_path / "raw", 3, size=240, seed=2, layout=layout.name, workers=1,
                              test_patients=2 if layout is OIA else 0)
    df = read_annotations(root / layout.annotations)
    assert df["ID"].tolist() == [0, 1, 2]
    for name in df["Left-Fundus"].tolist() + df["Right-Fundus"].tolist():
        img = _read_rgb(root / layout.images / name)
        h, w = img.shape[:2]
        assert 100 <= w <= 240 and 1.0 <= w / h <= 1.51
        assert img[0, 0].max() < 20 and img[h // 2, w // 2].max() > 30
        out = preprocess_fundus(img, 32)  # the image engineer's FOV/circle chain accepts it
        assert out.shape == (32, 32, 3) and out[16, 16].max() > 20
    if layout is OIA:
        for _, ann, imgs in layout.test_sets:
            test = read_annotations(root / ann)
            assert len(test) == 2 and set(test["ID"]).isdisjoint(df["ID"])
            assert all((root / imgs / f).is_file() for f in test["Left-Fundus"])
        assert read_annotations(root / OIA.test_sets[0][1])["ID"].tolist() == [3, 4]
    if layout is KAGGLE:
        full = pd.read_csv(root / synthetic.KAGGLE_FULL_DF)
        assert list(full.columns) == COLUMNS + PER_IMAGE_COLUMNS and len(full) == 6
        assert full["filename"].tolist() == df["Right-Fundus"].tolist() + df["Left-Fundus"].tolist()
        assert all(fp.endswith("ODIR-5K/Training Images/" + fn) for fp, fn in zip(full["filepath"], full["filename"]))
        for row in full.itertuples(index=False):
            side = "Right" if row.filename.endswith("_right.jpg") else "Left"
            kw = df.loc[df["ID"] == row.ID, f"{side}-Diagnostic Keywords"].item()
            target = eye_labels(kw)
            assert row.target == str(target.tolist())
            assert row.labels == str([lab for lab, v in zip(LABELS, target) if v])
        pd.testing.assert_frame_equal(read_annotations(root / synthetic.KAGGLE_FULL_DF), df)


def test_zip_output(tmp_path):
    path = synthetic.generate(tmp_path / "gc", 2, size=200, layout="grand-challenge", zip=True, workers=1)
    assert path == tmp_path / "gc.zip" and not (tmp_path / "gc").exists()
    with zipfile.ZipFile(path) as zf:
        names = set(zf.namelist())
    assert GRAND_CHALLENGE.annotations in names
    assert f"{GRAND_CHALLENGE.images}/1_right.jpg" in names
    assert [p.name for p in tmp_path.iterdir()] == ["gc.zip"]  # no temporary left behind


def test_special_images_have_white_corners():
    name = sorted(SPECIAL_IMAGES)[0]  # 2174_right.jpg
    pid = int(name.split("_")[0])
    left, right = synthetic.render_patient(0, pid, 240, raw=True)
    special, other = (right, left) if "right" in name else (left, right)
    assert special[0, 0].min() == 255 and special[-1, -1].min() == 255
    assert other[0, 0].max() < 20
    assert preprocess_fundus(special, 48)[0, 0].max() < 20  # the preparation chain blackens the white surround


def test_signs_scale_with_severity():
    def patient_with(lab, seed=0):
        target = np.eye(8, dtype=int)[LABELS.index(lab)]
        return next(p for p in range(5000) if np.array_equal(synthetic.sample_patient(seed, p).labels, target))
    n = patient_with("N")
    np.testing.assert_array_equal(synthetic.render_patient(0, n, 64, False, 0.0)[0],
                                  synthetic.render_patient(0, n, 64, False, 1.0)[0])
    for lab in ("D", "G", "C", "A", "H", "M", "O"):
        pid = patient_with(lab)
        p = synthetic.sample_patient(0, pid)
        eye = 0 if eye_labels(KEYWORD_SEPARATOR.join(p.left_keywords))[LABELS.index(lab)] else 1
        none = synthetic.render_patient(0, pid, 64, False, 0.0)[eye].astype(float)
        full = synthetic.render_patient(0, pid, 64, False, 1.0)[eye].astype(float)
        strong = synthetic.render_patient(0, pid, 64, False, 2.0)[eye].astype(float)
        # a visible local change at 64 px (1% of pixels change by > 12 levels), growing with severity
        assert np.percentile(np.abs(full - none).max(axis=2), 99) > 12, lab
        assert np.abs(strong - none).mean() > np.abs(full - none).mean() > 0.5, lab


def test_demo_dataset_is_cached(tmp_path):
    path = synthetic.demo_dataset(tmp_path, patients=3, size=32, seed=4)
    assert path == tmp_path / "demo_3_32_4"
    stamp = (path / "annotations.xlsx").stat().st_mtime_ns
    assert synthetic.demo_dataset(tmp_path, patients=3, size=32, seed=4) == path
    assert (path / "annotations.xlsx").stat().st_mtime_ns == stamp
    assert len(list((path / "images").iterdir())) == 6
    assert [p.name for p in tmp_path.iterdir()] == ["demo_3_32_4"]


def test_cli(tmp_path, capsys):
    with pytest.raises(SystemExit):
        synthetic.main(["--help"])
    assert "--severity" in capsys.readouterr().out
    out, png = tmp_path / "cli", tmp_path / "sheet.png"
    assert synthetic.main(["--out", str(out), "--patients", "2", "--size", "32", "--seed", "1",
                           "--workers", "1", "--preview", str(png)]) == 0
    assert len(read_annotations(out / "annotations.xlsx")) == 2
    sheet = _read_rgb(png)
    assert sheet.shape[0] > 4 * 160 and sheet.shape[1] > 4 * 160
    assert synthetic.main(["--out", str(out), "--patients", "2"]) == 2  # exists: clear error, no overwrite
    assert "already exists" in capsys.readouterr().err


def _option_help(parser) -> dict[str, str]:
    """Each option's help text as printed by ``--help``, joined into one line."""
    blocks, current = {}, None
    for line in parser.format_help().split("options:", 1)[1].splitlines():
        if line.startswith("  -"):
            current = line.split()[0].rstrip(",")
            blocks[current] = line
        elif current and line.strip():
            blocks[current] += " " + line.strip()
    return {k: " ".join(v.split()) for k, v in blocks.items()}


def test_help_says_each_default_once():
    parser = synthetic._parser()
    helps = _option_help(parser)
    for action in parser._actions:
        if not action.option_strings or action.dest == "help":
            continue
        text, own = helps[action.option_strings[0]], action.help or ""
        if "default" in own or action.default is None or action.default is False:
            assert text.count("default") == own.count("default"), text  # its help says it, or there is none
        else:
            assert text.count("default") == 1 and text.endswith(f"(default: {action.default})"), text
    assert helps["--size"].count("default") == 2  # one default per kind of layout, said in its help
    assert "(default: 0)" in helps["--seed"] and helps["--zip"] == "--zip write a zip file instead of a folder"


@pytest.mark.parametrize("layout", ["kaggle", "oia"])
def test_prepare_reads_generated_zip(tmp_path, layout):
    from odir_core.data import prepare

    src = synthetic.generate(tmp_path / "src", 2, size=200, seed=7, layout=layout, zip=True, workers=1)
    assert prepare.main(["--source", str(src), "--out", str(tmp_path / "prep"), "--size", "32",
                         "--workers", "1"]) in (0, None)
    df = read_annotations(tmp_path / "prep" / "annotations.xlsx")
    assert df["ID"].tolist() == [0, 1]
    assert _read_rgb(tmp_path / "prep" / "images" / df["Left-Fundus"][0]).shape == (32, 32, 3)
