"""The read stage's entry: `open_input` picks the reader a file gets (by its suffix; "-" is CSV
on stdin) and returns the file checked as a whole, ready to stream its rows in chunks.

Everything that can be wrong with the file as a whole (missing, binary, not UTF-8, no id column,
no rows) is checked by `open_input` before a single row is handed on, and raised as an
`InputError` with one line that says what to do. Problems only found further in (a bad byte at
line 800,000, a row with too many fields) raise the same error naming the line; the pipeline reads
the file once to validate before it sends anything, so those still stop the run before a request.

Cells are read as the exact text written: no NaN, no type guessing. What a cell means is decided
in `pipeline.stages.validate`.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import BinaryIO

from pipeline.core.errors import InputError
from pipeline.stages.input.columns import MAPPABLE_FIELDS
from pipeline.stages.input.csv_file import open_csv
from pipeline.stages.input.csv_text import check_delimiter
from pipeline.stages.input.input_file import READ_BLOCK, InputFile
from pipeline.stages.input.parquet import open_parquet_input

CSV_SUFFIXES = frozenset({".csv", ".tsv", ".txt"})
PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})


def open_input(
    path: str | Path,
    *,
    column_map: Mapping[str, str] | None = None,
    delimiter: str | None = None,
    stdin: BinaryIO | None = None,
    sheet: str | int | None = None,
) -> InputFile:
    """Check a CSV, Parquet or spreadsheet input file as a whole and return it ready to stream.

    `path` "-" reads CSV from stdin (or from `stdin` when given), spooled to a temporary file
    because the pipeline reads its input twice. `column_map` maps FIELD -> COLUMN for files whose
    columns have other names; `delimiter` forces a CSV delimiter instead of detecting it;
    `sheet` picks a workbook's sheet by name or by number from 1 (default: the first).
    Raises InputError with one line saying what is wrong and what to do.
    """
    column_map = dict(column_map or {})
    unknown = [field for field in column_map if field not in MAPPABLE_FIELDS]
    if unknown:
        raise InputError(
            f"--map {unknown[0]}=...: unknown field {unknown[0]!r}; "
            f"fields are {', '.join(MAPPABLE_FIELDS)}"
        )
    forced_delimiter = check_delimiter(delimiter) if delimiter is not None else None
    from pipeline.stages.input.spreadsheet import SPREADSHEET_SUFFIXES, open_spreadsheet

    suffix = Path(path).suffix.lower()
    if sheet is not None and suffix not in SPREADSHEET_SUFFIXES:
        shown = "stdin" if str(path) == "-" else str(path)
        raise InputError(
            f"--sheet: {shown} is not a spreadsheet (.xlsx, .xlsm, .xls or .ods); leave it out"
        )
    if str(path) == "-":
        spooled = _spool_stdin(stdin)
        try:
            return open_csv(spooled, "stdin", column_map, forced_delimiter, temporary=True)
        except BaseException:
            spooled.unlink(missing_ok=True)
            raise
    path = Path(path)
    name = str(path)
    if not path.exists():
        raise InputError(f"{name}: no such file; check the path")
    if path.is_dir():
        raise InputError(f"{name} is a directory; pass a .csv or .parquet file")
    if suffix in SPREADSHEET_SUFFIXES:
        if delimiter is not None:
            raise InputError(f"--delimiter: {name} is a spreadsheet, not CSV; leave it out")
        return open_spreadsheet(path, name, column_map, sheet)
    if suffix in PARQUET_SUFFIXES:
        return open_parquet_input(path, name, column_map)
    if suffix in CSV_SUFFIXES:
        return open_csv(path, name, column_map, forced_delimiter)
    raise InputError(
        f"{name}: unsupported file type {suffix or '(no suffix)'!r}; mateo-bulk reads .csv, "
        ".parquet, .xlsx, .xlsm, .xls and .ods files"
    )


def _spool_stdin(stdin: BinaryIO | None) -> Path:
    if stdin is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise InputError("no input on stdin: pipe a CSV file in, e.g. `... run - < rows.csv`")
        stdin = sys.stdin.buffer
    handle, name = tempfile.mkstemp(prefix="mateo-bulk-stdin-", suffix=".csv")
    spooled = Path(name)
    try:
        with os.fdopen(handle, "wb") as file:
            shutil.copyfileobj(stdin, file, READ_BLOCK)
    except BaseException:
        spooled.unlink(missing_ok=True)
        raise
    return spooled
