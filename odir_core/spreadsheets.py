"""Tables written so that a spreadsheet program never runs a cell as a formula, and read back unchanged.

xlsx: text is stored as text cells (openpyxl data type ``s``); openpyxl would otherwise store a string
starting with ``=`` as a live formula. Readers (pandas, openpyxl, Excel) get the exact string back.

csv: a file has no cell types, and spreadsheet programs run a field starting with ``=``, ``+``, ``-``,
``@``, tab or carriage return as a formula when they open it. Text fields starting so are written with
a leading ``'`` (OWASP's CSV injection advice, what spreadsheets show as plain text); a text that
already starts with quotes before such a character gets one more, so :func:`unquote_csv` (used by
this project's CSV readers) gives every value back exactly. Numbers are written as they are.
"""

from __future__ import annotations

import pandas as pd

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
QUOTE = "'"

__all__ = ["FORMULA_STARTS", "write_xlsx", "quote_csv", "unquote_csv"]


def write_xlsx(frame: pd.DataFrame, path, **to_excel) -> None:
    """``frame.to_excel(path, **to_excel)`` with every cell that openpyxl took for a formula stored as text."""
    with pd.ExcelWriter(path, engine="openpyxl") as writer:
        frame.to_excel(writer, **to_excel)
        for sheet in writer.sheets.values():
            for row in sheet.iter_rows():
                for cell in row:
                    if cell.data_type == "f":
                        cell.data_type = "s"


def _runs_as_formula(text: str) -> bool:
    """Whether ``text``, once any leading quotes are taken off, starts as a spreadsheet formula."""
    return text.lstrip(QUOTE).startswith(FORMULA_STARTS)


def _quote(value):
    return QUOTE + value if isinstance(value, str) and _runs_as_formula(value) else value


def _unquote(value):
    return value[1:] if isinstance(value, str) and value.startswith(QUOTE) and _runs_as_formula(value) else value


def _text_columns(frame: pd.DataFrame) -> list:
    return [column for column in frame.columns if not pd.api.types.is_numeric_dtype(frame[column])]


def quote_csv(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` to write as csv: text cells that would run as a formula get a leading ``'``."""
    out = frame.copy()
    for column in _text_columns(out):
        out[column] = out[column].map(_quote)
    return out


def unquote_csv(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` as read from a csv written after :func:`quote_csv`: every text cell as it was before."""
    out = frame.copy()
    for column in _text_columns(out):
        out[column] = out[column].map(_unquote)
    return out
