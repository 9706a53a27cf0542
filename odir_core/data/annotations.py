"""Read, validate and write ODIR-5K patient annotations.

One normalised table (COLUMNS, one row per patient) from every layout users
have: the grand-challenge xlsx, Kaggle's data.xlsx and per-image full_df.csv,
the OIA-ODIR training/off-site/on-site xlsx files, and our own xlsx/csv.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import pandas as pd

from odir_core.errors import InputError

from odir_core.atomic import atomic_path
from odir_core.data.keywords import (
    IGNORED_KEYWORDS,
    KEYWORD_LABELS,
    KEYWORD_SEPARATOR,
    NON_DECISIVE_KEYWORDS,
    eye_labels,
    normalise_keywords,
    patient_labels,
)
from odir_core.labels import LABELS, SPECIAL_IMAGES
from odir_core.spreadsheets import quote_csv, unquote_csv, write_xlsx
from odir_core.table_headers import HEADER_SEARCH_ROWS, csv_delimiter, header_key, names_patient_labels

__all__ = [
    "COLUMNS",
    "AnnotationError",
    "read_annotations",
    "write_annotations",
    "image_path",
    "label_matrix",
    "is_special",
    "eye_labels",
    "patient_labels",
    "KEYWORD_LABELS",
    "NON_DECISIVE_KEYWORDS",
    "IGNORED_KEYWORDS",
    "KEYWORD_SEPARATOR",
]

COLUMNS = [
    "ID",
    "Patient Age",
    "Patient Sex",
    "Left-Fundus",
    "Right-Fundus",
    "Left-Diagnostic Keywords",
    "Right-Diagnostic Keywords",
    *LABELS,
]
REQUIRED = ["ID", "Left-Fundus", "Right-Fundus", *LABELS]
KEYWORD_COLUMNS = ["Left-Diagnostic Keywords", "Right-Diagnostic Keywords"]
FUNDUS_COLUMNS = ["Left-Fundus", "Right-Fundus"]
# Kaggle full_df.csv: one row per image with these extra per-image columns.
PER_IMAGE_COLUMNS = ["filepath", "labels", "target", "filename"]

_SPECIAL_STEMS = frozenset(Path(name).stem for name in SPECIAL_IMAGES)


class AnnotationError(InputError):
    """An annotations file that cannot be used, with where and how to fix it."""


_CANONICAL = {header_key(col): col for col in COLUMNS + PER_IMAGE_COLUMNS}


def _read_raw(path: Path) -> pd.DataFrame:
    """Every cell as read, no header interpretation (row 0 = spreadsheet row 1)."""
    if not path.is_file():
        raise AnnotationError(f"{path}: file not found; pass the path of the annotations .xlsx or .csv file")
    suffix = path.suffix.lower()
    try:
        if suffix in (".xlsx", ".xlsm", ".xls"):
            return pd.read_excel(path, header=None, dtype=object)
        if suffix == ".csv":
            return unquote_csv(pd.read_csv(path, header=None, dtype=str, keep_default_na=False, encoding="utf-8-sig",
                                           sep=csv_delimiter(path)))
    except Exception as exc:  # any parser failure means the same thing to the user
        raise AnnotationError(
            f"{path}: cannot be read as {suffix[1:]} ({type(exc).__name__}: {exc}); "
            "re-download it or re-save it from a spreadsheet program"
        ) from None
    raise AnnotationError(f"{path}: unsupported file type {suffix!r}; use an .xlsx or .csv annotations file")


def _locate_header(raw: pd.DataFrame, path: Path) -> int:
    """Index of the header row: the first of the top rows naming ID and N..O."""
    for i in range(min(HEADER_SEARCH_ROWS, len(raw))):
        if names_patient_labels(v for v in raw.iloc[i] if not _is_blank(v)):
            return i
    first = [str(v).strip() for v in raw.iloc[0] if not _is_blank(v)] if len(raw) else []
    keys = {header_key(v) for v in first}
    missing = [col for col in REQUIRED if header_key(col) not in keys]
    raise AnnotationError(
        f"{path}: row 1: missing column(s) {', '.join(repr(c) for c in missing)} "
        f"(found {first}); the header row must name {', '.join(REQUIRED)}"
    )


def _is_blank(value) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and np.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _table(path: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """Data rows under canonical column names, and each row's spreadsheet row number."""
    raw = _read_raw(path)
    if raw.empty:
        raise AnnotationError(f"{path}: the file is empty; it needs a header row and one row per patient")
    h = _locate_header(raw, path)
    names = []
    for j, value in enumerate(raw.iloc[h]):
        name = _CANONICAL.get(header_key(value), None if _is_blank(value) else str(value).strip())
        names.append(name if name is not None else f"__unnamed_{j}")
    seen = set()
    for name in names:
        if name in seen and not name.startswith("__unnamed_"):
            raise AnnotationError(f"{path}: row {h + 1}: column {name!r} appears twice; keep one of them")
        seen.add(name)
    body = raw.iloc[h + 1 :].copy()
    body.columns = names
    rownums = np.arange(h + 2, h + 2 + len(body))
    keep = np.array([not all(_is_blank(v) for v in row) for row in body.itertuples(index=False)], dtype=bool)
    # Some distributed files repeat the header row inside the data.
    if "ID" in body.columns:
        keep &= np.array([header_key(v) != "id" for v in body["ID"]], dtype=bool)
    if not keep.any():
        raise AnnotationError(
            f"{path}: no patient rows under the header (row {h + 1}); add one row per patient, "
            "or pass the annotations file that has them"
        )
    body = body[keep].reset_index(drop=True)
    return body, rownums[keep]


def _where(path: Path, row: int, column: str) -> str:
    return f"{path}: row {row}, column {column!r}"


def _whole_number(value) -> int | None:
    """The whole number in a cell (exact for long digit strings, which a float would round), else None."""
    text = str(value).strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


def _to_int(path, body, rownums, column, *, fix, allowed=None, bits=64) -> np.ndarray:
    """A column as int64, one error naming the first bad cell: blank, not a whole number, not ``allowed``,
    or beyond a signed integer of ``bits`` bits."""
    out = np.empty(len(body), dtype=np.int64)
    limit = 2 ** (bits - 1)
    for i, value in enumerate(body[column]):
        number = None if _is_blank(value) else _whole_number(value)
        if number is not None and not -limit <= number < limit:
            number = None
        if number is None or (allowed is not None and number not in allowed):
            shown = "an empty cell" if _is_blank(value) else repr(value)
            raise AnnotationError(f"{_where(path, rownums[i], column)}: got {shown}; {fix}")
        out[i] = number
    return out


def _aggregate_images(path: Path, body: pd.DataFrame, rownums: np.ndarray):
    """Kaggle full_df.csv: one row per image -> one row per patient.

    The per-image file lists one eye's block after the other, while the
    patient files it comes from are in ascending ID order: rows are sorted by ID.
    """
    patient_cols = [c for c in body.columns if c in COLUMNS]
    ids = body["ID"].map(lambda v: str(v).strip())
    first = {}
    for i, pid in enumerate(ids):
        if pid in first:
            j = first[pid]
            for col in patient_cols:
                a, b = body.iat[i, body.columns.get_loc(col)], body.iat[j, body.columns.get_loc(col)]
                if str(a).strip() != str(b).strip():
                    raise AnnotationError(
                        f"{_where(path, rownums[i], col)}: {a!r} differs from {b!r} on row {rownums[j]} "
                        f"for the same patient {pid}; one patient's rows must agree on every patient column"
                    )
        else:
            first[pid] = i
    keep = np.array(sorted(first.values(), key=lambda i: _id_order(ids.iat[i])), dtype=int)
    return body.iloc[keep][patient_cols].reset_index(drop=True), rownums[keep]


def _id_order(pid: str) -> tuple:
    try:
        return (0, float(pid))
    except ValueError:  # reported as a bad ID later
        return (1, 0.0)


def _normalise(path: Path, body: pd.DataFrame, rownums: np.ndarray, id_bits: int = 64) -> pd.DataFrame:
    missing = [col for col in REQUIRED if col not in body.columns]
    if missing:
        found = [c for c in body.columns if not c.startswith("__unnamed_")]
        raise AnnotationError(
            f"{path}: header row: missing column(s) {', '.join(repr(c) for c in missing)} (found {found}); "
            f"add them: the file needs {', '.join(REQUIRED)}"
        )
    out = pd.DataFrame(index=pd.RangeIndex(len(body)))
    out["ID"] = _to_int(path, body, rownums, "ID", bits=id_bits,
                        fix=f"the ID must be a whole number from -2**{id_bits - 1} to 2**{id_bits - 1} - 1: fill it in, "
                        "renumber the patient or delete the row")
    if "Patient Age" in body.columns:
        age = pd.to_numeric(body["Patient Age"].map(lambda v: None if _is_blank(v) else v), errors="coerce")
        out["Patient Age"] = age.astype("int64") if age.notna().all() and (age % 1 == 0).all() else age
    else:
        out["Patient Age"] = np.nan
    sex = body["Patient Sex"] if "Patient Sex" in body.columns else pd.Series([""] * len(body))
    out["Patient Sex"] = [("" if _is_blank(v) else str(v).strip()) for v in sex]
    for col in FUNDUS_COLUMNS:
        values = []
        for i, value in enumerate(body[col]):
            if _is_blank(value):
                raise AnnotationError(
                    f"{_where(path, rownums[i], col)}: empty; put the image file name (e.g. 0_left.jpg) there"
                )
            values.append(plain_image_name(str(value).strip(), _where(path, rownums[i], col)))
        out[col] = values
    for col in KEYWORD_COLUMNS:
        out[col] = [normalise_keywords(v) for v in body[col]] if col in body.columns else ""
    for label in LABELS:
        out[label] = _to_int(path, body, rownums, label, fix="labels must be 0 or 1: set it to 0 or 1", allowed=(0, 1))
    _check_unique(path, out, rownums)
    return out[COLUMNS]


def _check_unique(path: Path, df: pd.DataFrame, rownums: np.ndarray) -> None:
    first: dict = {}
    for i, pid in enumerate(df["ID"]):
        if pid in first:
            raise AnnotationError(
                f"{_where(path, rownums[i], 'ID')}: ID {pid} is already on row {first[pid]}; "
                "each patient must appear once: merge the rows or give one a new ID"
            )
        first[pid] = rownums[i]
    names: dict = {}
    for i in range(len(df)):
        for col in FUNDUS_COLUMNS:
            name = df[col].iat[i]
            if name in names:
                row, other = names[name]
                raise AnnotationError(
                    f"{_where(path, rownums[i], col)}: image {name!r} is already named on row {row}, "
                    f"column {other!r}; each image belongs to one eye of one patient: correct the file name"
                )
            names[name] = (rownums[i], col)


def plain_image_name(name: str, where: str) -> str:
    """``name`` when it is a file name alone (no folder part, not absolute, not '.' or '..' on any system),
    so that it names a file directly inside the image folder; else an AnnotationError starting with ``where``."""
    if name in ("", ".", "..") or PurePosixPath(name).name != name or PureWindowsPath(name).name != name:
        raise AnnotationError(
            f"{where}: {name!r} is not a plain file name; images are read only from the image folder: "
            "put the file's name alone there (e.g. 0_left.jpg) and the file in the image folder"
        )
    return name


def image_path(folder, name: str, where: str) -> Path:
    """The file ``name`` (an annotations' image name) inside the image ``folder``; a name that would reach
    outside it (a path, '..') is refused, naming ``where`` (see :func:`plain_image_name`). The folder
    itself may be a link, and so may the files in it: both are the user's own."""
    return Path(folder) / plain_image_name(str(name), where)


def is_special(df: pd.DataFrame) -> np.ndarray:
    """Boolean mask of patients with one of the 16 hospital-preprocessed images
    (matched by file stem, so prepared copies with another extension count)."""
    stems = [df[col].map(lambda n: Path(str(n)).stem) for col in FUNDUS_COLUMNS]
    return (stems[0].isin(_SPECIAL_STEMS) | stems[1].isin(_SPECIAL_STEMS)).to_numpy()


def read_annotations(path, *, exclude_special: bool = True, id_bits: int = 64) -> pd.DataFrame:
    """Read and validate an annotations file of any supported layout.

    Returns one row per patient with exactly COLUMNS (ID int, labels int 0/1,
    keyword cells in canonical form, image names that are plain file names),
    in file order, with a RangeIndex.
    Raises AnnotationError naming the file, row, column and fix on bad input.
    With exclude_special, patients with one of the 16 special images are dropped.
    id_bits: IDs must fit a signed integer of this many bits (64 for the table; the odir5k TFDS records hold 32).
    """
    path = Path(path)
    body, rownums = _table(path)
    if "filename" in body.columns:
        body, rownums = _aggregate_images(path, body, rownums)
    df = _normalise(path, body, rownums, id_bits)
    if exclude_special:
        df = df[~is_special(df)].reset_index(drop=True)
    return df


def write_annotations(df: pd.DataFrame, path) -> Path:
    """Write annotations (COLUMNS) to .xlsx or .csv by suffix, atomically; text never becomes a spreadsheet
    formula (odir_core.spreadsheets)."""
    path = Path(path)
    missing = [col for col in COLUMNS if col not in df.columns]
    if missing:
        raise AnnotationError(f"cannot write {path}: the table lacks column(s) {missing}")
    suffix = path.suffix.lower()
    if suffix not in (".xlsx", ".csv"):
        raise AnnotationError(f"cannot write {path}: use a .xlsx or .csv file name")
    with atomic_path(path) as tmp:  # the user's umask applies, as for any other written file
        if suffix == ".xlsx":
            write_xlsx(df[COLUMNS], tmp, index=False)
        else:
            quote_csv(df[COLUMNS]).to_csv(tmp, index=False)
    return path


def label_matrix(df: pd.DataFrame) -> np.ndarray:
    """The (n, 8) float32 label matrix in LABELS order."""
    return df[list(LABELS)].to_numpy(dtype=np.float32)
