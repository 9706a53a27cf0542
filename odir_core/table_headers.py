"""Header rows of the label tables users bring (annotations, ground truth, probabilities): names compared
up to case, spaces, dashes and underscores, and the CSV delimiter found from the header row."""

from __future__ import annotations

import re
from pathlib import Path

from odir_core.labels import LABELS

HEADER_SEARCH_ROWS = 10  # a header row is looked for among the first rows (titles may sit above it)
_DELIMITERS = (",", ";", "\t")


def header_key(name) -> str:
    """Header comparison key: case, spaces, dashes and underscores ignored."""
    return re.sub(r"[^0-9a-z]", "", str(name).lower())


def names_patient_labels(cells) -> bool:
    """Whether header cells name ID and every label N..O."""
    keys = {header_key(cell) for cell in cells}
    return "id" in keys and {header_key(label) for label in LABELS} <= keys


def csv_delimiter(path: str | Path) -> str:
    """The CSV's delimiter: the one (comma, semicolon or tab) that splits a header row into ID and N..O.

    Spreadsheet programs in many locales save CSVs with semicolons; a file where no delimiter yields the
    header row is read with commas (and reported as missing columns).
    """
    with open(path, encoding="utf-8-sig", errors="replace") as f:
        lines = [f.readline() for _ in range(HEADER_SEARCH_ROWS)]
    for line in lines:
        for sep in _DELIMITERS:
            if names_patient_labels(line.split(sep)):
                return sep
    return ","
