"""odir_core.data.annotations and odir_core.data.keywords: every layout, validation, keyword rules."""

from pathlib import Path

import numpy as np
import openpyxl
import pandas as pd
import pytest

from odir_core.data.annotations import (
    COLUMNS,
    IGNORED_KEYWORDS,
    KEYWORD_LABELS,
    KEYWORD_SEPARATOR,
    NON_DECISIVE_KEYWORDS,
    AnnotationError,
    eye_labels,
    label_matrix,
    patient_labels,
    read_annotations,
    write_annotations,
)
from odir_core.data.keywords import split_keywords
from odir_core.labels import LABELS
from reference_data import ANNOTATIONS as REAL_XLSX
from reference_data import require



def letters(vector) -> str:
    return "".join(label for label, v in zip(LABELS, vector) if v)


def onehot(text: str) -> list[int]:
    return [int(label in text) for label in LABELS]


def patients() -> pd.DataFrame:
    """Four patients in the grand-challenge column layout (canonical keywords)."""
    rows = [
        (0, 69, "Female", "0_left.jpg", "0_right.jpg", "cataract", "normal fundus", "C"),
        (1, 57, "Male", "1_left.jpg", "1_right.jpg", "normal fundus", "normal fundus", "N"),
        (2, 42, "Male", "2_left.jpg", "2_right.jpg", "laser spot，moderate non proliferative retinopathy",
         "moderate non proliferative retinopathy", "DO"),
        (5, 60, "Female", "5_left.jpg", "5_right.jpg", "suspected glaucoma", "lens dust，normal fundus", "G"),
    ]
    return pd.DataFrame(
        [list(r[:7]) + onehot(r[7]) for r in rows], columns=COLUMNS
    )


def expected() -> pd.DataFrame:
    return patients()


def assert_frame(df: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(df.columns) == COLUMNS
    assert isinstance(df.index, pd.RangeIndex) and df.index.start == 0
    assert df["ID"].dtype == np.int64
    for label in LABELS:
        assert df[label].dtype == np.int64
    assert df["ID"].tolist() == want["ID"].tolist()
    for col in COLUMNS[1:]:
        assert [str(v) for v in df[col]] == [str(v) for v in want[col]], col


# ---------------------------------------------------------------- layouts


def test_grand_challenge_xlsx_with_untidy_headers_and_keywords(tmp_path):
    df = patients()
    untidy = df.rename(columns={"Left-Diagnostic Keywords": "Left-Diagnostic Keywords ", "N": " N ", "ID": "ID "})
    # full-width commas with spaces around, ASCII comma, doubled inner space
    untidy.loc[2, "Left-Diagnostic Keywords "] = " laser  spot ， moderate non proliferative retinopathy "
    untidy.loc[3, "Right-Fundus"] = " 5_right.jpg "
    untidy.loc[3, "Right-Diagnostic Keywords"] = "lens dust,normal fundus"
    path = tmp_path / "ODIR-5K_Training_Annotations(Updated)_V2.xlsx"
    untidy.to_excel(path, index=False)
    assert_frame(read_annotations(path), expected())


def test_kaggle_data_xlsx(tmp_path):
    path = tmp_path / "data.xlsx"
    patients().to_excel(path, index=False, sheet_name="Sheet1")
    assert_frame(read_annotations(path), expected())


def kaggle_full_df(df: pd.DataFrame) -> pd.DataFrame:
    """Kaggle's per-image table: a block of right eyes, then a block of left
    eyes, each row repeating the patient columns plus per-image columns."""
    rows = []
    for eye in ("right", "left"):
        for _, r in df.iterrows():
            if eye == "right" and r["ID"] == 1:
                continue  # this patient's right image is missing from the per-image table
            name = r[f"{eye.capitalize()}-Fundus"]
            rows.append(
                {**r.to_dict(), "filepath": f"../input/ODIR-5K/Training Images/{name}", "labels": "['N']",
                 "target": "[1, 0, 0, 0, 0, 0, 0, 0]", "filename": name}
            )
    return pd.DataFrame(rows)


def test_kaggle_full_df_csv_aggregates_to_patients(tmp_path):
    path = tmp_path / "full_df.csv"
    full = kaggle_full_df(patients())
    assert len(full) == 7 and full["ID"].tolist()[:3] == [0, 2, 5]
    full.to_csv(path, index=False)
    assert_frame(read_annotations(path), expected())


def test_kaggle_full_df_csv_inconsistent_patient_rows(tmp_path):
    path = tmp_path / "full_df.csv"
    full = kaggle_full_df(patients())
    full.loc[6, "D"] = 1  # patient 5's left-eye row disagrees with its right-eye row (row 4)
    full.to_csv(path, index=False)
    with pytest.raises(AnnotationError) as err:
        read_annotations(path)
    msg = str(err.value)
    assert str(path) in msg and "row 8" in msg and "'D'" in msg and "row 4" in msg


def test_oia_training_xlsx_with_repeated_header_and_blank_row(tmp_path):
    df = patients()
    header = pd.DataFrame([list(df.columns)], columns=df.columns)
    blank = pd.DataFrame([[None] * len(df.columns)], columns=df.columns)
    messy = pd.concat([df.iloc[:2], header, df.iloc[2:], blank], ignore_index=True)
    path = tmp_path / "training annotation (English).xlsx"
    messy.to_excel(path, index=False)
    assert_frame(read_annotations(path), expected())


def test_oia_test_set_without_keywords_or_sex(tmp_path):
    df = patients().drop(columns=["Left-Diagnostic Keywords", "Right-Diagnostic Keywords", "Patient Sex"])
    path = tmp_path / "off-site test annotation (English).xlsx"
    df.to_excel(path, index=False)
    got = read_annotations(path)
    assert list(got.columns) == COLUMNS
    assert got["Left-Diagnostic Keywords"].tolist() == [""] * 4
    assert got["Patient Sex"].tolist() == [""] * 4
    assert got["ID"].tolist() == [0, 1, 2, 5]
    np.testing.assert_array_equal(label_matrix(got), label_matrix(patients()))


def test_header_below_a_title_row(tmp_path):
    df = patients()
    path = tmp_path / "titled.xlsx"
    with pd.ExcelWriter(path) as writer:
        pd.DataFrame([["ODIR-5K annotations"]]).to_excel(writer, index=False, header=False)
        df.to_excel(writer, index=False, startrow=1)
    assert_frame(read_annotations(path), expected())
    df.loc[1, "G"] = 2
    with pd.ExcelWriter(path) as writer:
        pd.DataFrame([["ODIR-5K annotations"]]).to_excel(writer, index=False, header=False)
        df.to_excel(writer, index=False, startrow=1)
    with pytest.raises(AnnotationError, match=r"row 4, column 'G'"):
        read_annotations(path)


@pytest.mark.parametrize("suffix", [".xlsx", ".csv"])
def test_normalised_roundtrip(tmp_path, suffix):
    path = write_annotations(patients(), tmp_path / "out" / f"annotations{suffix}")
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    assert_frame(read_annotations(path), expected())


def test_write_rejects_incomplete_table(tmp_path):
    with pytest.raises(AnnotationError, match="lacks column"):
        write_annotations(patients().drop(columns=["O"]), tmp_path / "a.xlsx")
    with pytest.raises(AnnotationError, match=r"\.xlsx or \.csv"):
        write_annotations(patients(), tmp_path / "a.json")


def test_special_images_excluded_by_default(tmp_path):
    df = patients()
    df.loc[1, ["ID", "Left-Fundus", "Right-Fundus"]] = [2174, "2174_left.jpg", "2174_right.jpg"]
    df.loc[3, ["ID", "Left-Fundus", "Right-Fundus"]] = [2957, "2957_left.png", "2957_right.png"]
    path = tmp_path / "annotations.csv"
    df.to_csv(path, index=False)
    assert read_annotations(path)["ID"].tolist() == [0, 2]
    assert read_annotations(path, exclude_special=False)["ID"].tolist() == [0, 2174, 2, 2957]


def test_label_matrix():
    y = label_matrix(patients())
    assert y.dtype == np.float32 and y.shape == (4, 8)
    assert [letters(row) for row in y] == ["C", "N", "DO", "G"]


# ---------------------------------------------------------------- validation


def write_csv(tmp_path, df, name="annotations.csv") -> Path:
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


def error_of(path) -> str:
    with pytest.raises(AnnotationError) as err:
        read_annotations(path)
    return str(err.value)


def test_missing_label_column(tmp_path):
    path = write_csv(tmp_path, patients().drop(columns=["G"]))
    msg = error_of(path)
    assert str(path) in msg and "row 1" in msg and "'G'" in msg and "header row must name" in msg


def test_missing_fundus_column(tmp_path):
    path = write_csv(tmp_path, patients().drop(columns=["Right-Fundus"]))
    msg = error_of(path)
    assert str(path) in msg and "'Right-Fundus'" in msg and "add them" in msg


@pytest.mark.parametrize("value, shown", [(2, "got '2'"), (None, "got an empty cell"), ("yes", "got 'yes'")])
def test_non_binary_label(tmp_path, value, shown):
    df = patients().astype({"D": object})
    df.loc[2, "D"] = value  # spreadsheet row 4 (header is row 1)
    msg = error_of(write_csv(tmp_path, df))
    assert "row 4, column 'D'" in msg and shown in msg and "set it to 0 or 1" in msg


def test_non_binary_label_xlsx_nan(tmp_path):
    df = patients().astype({"H": float})
    df.loc[0, "H"] = np.nan
    path = tmp_path / "a.xlsx"
    df.to_excel(path, index=False)
    msg = error_of(path)
    assert str(path) in msg and "row 2, column 'H': got an empty cell; labels must be 0 or 1" in msg


def test_duplicate_id(tmp_path):
    df = patients()
    df.loc[3, "ID"] = 1
    msg = error_of(write_csv(tmp_path, df))
    assert "row 5, column 'ID'" in msg and "ID 1 is already on row 3" in msg and "appear once" in msg


def test_bad_id(tmp_path):
    df = patients().astype({"ID": object})
    df.loc[1, "ID"] = "1a"
    assert "row 3, column 'ID': got '1a'; the ID must be a whole number" in error_of(write_csv(tmp_path, df))


def test_duplicate_file_name(tmp_path):
    df = patients()
    df.loc[2, "Right-Fundus"] = "0_left.jpg"
    msg = error_of(write_csv(tmp_path, df))
    assert "row 4, column 'Right-Fundus'" in msg and "'0_left.jpg'" in msg and "row 2, column 'Left-Fundus'" in msg
    df = patients()
    df.loc[3, "Left-Fundus"] = "1_right.jpg"  # the later row is the one reported
    msg = error_of(write_csv(tmp_path, df))
    assert "row 5, column 'Left-Fundus'" in msg and "already named on row 3, column 'Right-Fundus'" in msg


def test_empty_file_name(tmp_path):
    df = patients()
    df.loc[1, "Left-Fundus"] = ""
    assert "row 3, column 'Left-Fundus': empty" in error_of(write_csv(tmp_path, df))


def test_unreadable_files(tmp_path):
    broken = tmp_path / "broken.xlsx"
    broken.write_bytes(b"this is not a spreadsheet")
    msg = error_of(broken)
    assert str(broken) in msg and "cannot be read" in msg and "re-download" in msg
    assert "file not found" in error_of(tmp_path / "absent.xlsx")
    other = tmp_path / "annotations.json"
    other.write_text("{}")
    assert "unsupported file type" in error_of(other)
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert str(empty) in error_of(empty)


# ---------------------------------------------------------------- keyword rules


def test_split_keywords_tolerates_untidy_cells():
    assert split_keywords(" Drusen ， laser  spot,cataract ，") == ["drusen", "laser spot", "cataract"]
    assert split_keywords(np.nan) == [] and split_keywords("") == []


def test_eye_labels_by_hand():
    assert letters(eye_labels("normal fundus")) == "N"
    assert letters(eye_labels("lens dust，normal fundus")) == "N"
    assert letters(eye_labels("epiretinal membrane，normal fundus，lens dust")) == "O"
    assert letters(eye_labels("wet age-related macular degeneration，drusen")) == "AO"
    assert letters(eye_labels("suspected cataract")) == "C"
    assert letters(eye_labels("myopic maculopathy")) == "M"
    assert letters(eye_labels("an unheard-of finding")) == "O"
    assert letters(eye_labels("low image quality")) == ""
    assert letters(eye_labels("anterior segment image")) == ""
    assert letters(eye_labels("no fundus image，cataract")) == ""


def test_patient_labels_by_hand():
    assert letters(patient_labels("normal fundus", "normal fundus")) == "N"
    assert letters(patient_labels("normal fundus", "suspected glaucoma")) == "G"
    assert letters(patient_labels("hypertensive retinopathy,diabetic retinopathy", "normal fundus")) == "DH"
    assert letters(patient_labels("anterior segment image", "pathological myopia")) == "M"
    assert letters(patient_labels("optic disk photographically invisible", "glaucoma")) == "G"
    assert letters(patient_labels("low image quality", "low image quality")) == "N"


def test_keyword_tables_are_disjoint():
    assert not (set(KEYWORD_LABELS) & NON_DECISIVE_KEYWORDS)
    assert not (set(KEYWORD_LABELS) & IGNORED_KEYWORDS)
    assert set(KEYWORD_LABELS.values()) == set(LABELS)
    assert KEYWORD_SEPARATOR == "，"


# ---------------------------------------------------------------- the real file


@pytest.fixture(scope="module")
def real_rows():
    require(REAL_XLSX)
    sheet = openpyxl.load_workbook(REAL_XLSX, read_only=True).active
    rows = list(sheet.iter_rows(values_only=True))
    return [str(h) for h in rows[0]], rows[1:]


@pytest.fixture(scope="module")
def real_df(real_rows):
    return read_annotations(REAL_XLSX, exclude_special=False)


def test_real_file_matches_openpyxl(real_rows, real_df):
    header, rows = real_rows
    assert header == COLUMNS
    assert len(real_df) == 3500
    assert real_df["ID"].tolist() == [int(r[0]) for r in rows]  # the file stores IDs as text
    np.testing.assert_array_equal(label_matrix(real_df), np.array([r[7:15] for r in rows], dtype=np.float32))
    assert real_df["Left-Fundus"].tolist() == [r[3] for r in rows]


def test_real_file_counts(real_df):
    counts = dict(zip(LABELS, label_matrix(real_df).sum(axis=0).astype(int).tolist()))
    assert counts == {"N": 1140, "D": 1128, "G": 215, "C": 212, "A": 164, "H": 103, "M": 174, "O": 979}
    kept = read_annotations(REAL_XLSX)
    assert len(kept) == 3490
    assert not set(kept["ID"]) & {2174, 2175, 2176, 2177, 2178, 2179, 2180, 2181, 2182, 2957}


def test_every_real_keyword_is_classified(real_rows):
    _, rows = real_rows
    known = set(KEYWORD_LABELS) | NON_DECISIVE_KEYWORDS | IGNORED_KEYWORDS
    seen = {kw for r in rows for cell in (r[5], r[6]) for kw in split_keywords(cell)}
    assert len(seen) > 100
    assert sorted(seen - known) == []


# Patients whose file labels differ from the keyword rules, measured on the
# real file: none once the myopic-retinopathy keywords count as M and the
# "suspected ..." keywords as their disease (rule 4).
REAL_DISAGREEMENTS = 0


def test_rule_labels_reproduce_real_labels(real_rows):
    _, rows = real_rows
    differ = [int(r[0]) for r in rows if letters(patient_labels(r[5], r[6])) != letters(r[7:15])]
    assert len(differ) == REAL_DISAGREEMENTS, differ


@pytest.mark.parametrize("sep", [";", "\t", ","])
def test_csv_delimiter_is_sniffed_from_the_header(tmp_path, sep):
    """Spreadsheet programs in many locales save CSVs with semicolons; keyword cells keep their commas."""
    df = patients()
    df.loc[0, "Left-Diagnostic Keywords"] = "cataract，normal fundus"
    path = tmp_path / "annotations.csv"
    df.to_csv(path, index=False, sep=sep)
    assert_frame(read_annotations(path, exclude_special=False), df)


def test_headers_match_whatever_their_case_and_surrounding_spaces(tmp_path):
    df = patients()
    renamed = df.rename(columns={c: f"  {c.lower()} " if i % 2 else c.upper() for i, c in enumerate(COLUMNS)})
    path = write_csv(tmp_path, renamed)
    assert_frame(read_annotations(path, exclude_special=False), df)
    renamed.to_excel(tmp_path / "a.xlsx", index=False)
    assert_frame(read_annotations(tmp_path / "a.xlsx", exclude_special=False), df)


@pytest.mark.parametrize("suffix", [".csv", ".xlsx"])
def test_header_only_file_names_the_file_and_says_no_patient_rows(tmp_path, suffix):
    path = tmp_path / f"annotations{suffix}"
    empty = pd.DataFrame(columns=COLUMNS)
    empty.to_csv(path, index=False) if suffix == ".csv" else empty.to_excel(path, index=False)
    message = error_of(path)
    assert message.startswith(f"{path}: no patient rows")
