"""The tables export and verify write: CSV or Parquet by the suffix, whole or not at all."""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.core import arrays
from pipeline.core.errors import InputError

#: Output formats of export and of verify's report, picked by the file's suffix.
OUTPUT_SUFFIXES: tuple[str, ...] = (".csv", ".parquet")


def check_output_path(path: Path, *, flag: str, force: bool = True) -> Path:
    """`path` if it can be written as CSV or Parquet; InputError before anything is sent."""
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise InputError(
            f"{flag} {str(path)!r}: the suffix must be one of {', '.join(OUTPUT_SUFFIXES)}"
        )
    if path.is_dir():
        raise InputError(f"{flag} {str(path)!r} is a directory; give a file name")
    if path.exists() and not force:
        raise InputError(f"{flag} {str(path)!r} exists; pass --force to replace it")
    return path


def cell_text(values: Mapping[str, str | None], name: str) -> str:
    """A value as an input file's cell: "null" for JSON null, empty when it was not returned."""
    if name not in values:
        return ""
    value = values[name]
    return "null" if value is None else value


class TableWriter:
    """Rows of text cells to CSV or Parquet (by the suffix), in batches; no path: no file.

    The rows go to `<path>.partial`, which becomes `path` only when the block ends without an
    error: a file under its own name is always whole. Parquet rows are buffered into row
    groups of ROW_GROUP rows (a row group per page of 50 would make a file slow to read).
    """

    ROW_GROUP = 10_000

    def __init__(self, columns: tuple[str, ...], path: Path | None) -> None:
        self._columns = columns
        self._path = path
        self._partial = None if path is None else path.with_name(path.name + ".partial")
        self._file: Any = None
        self._csv: Any = None
        self._pending: list[dict[str, Any]] = []

    def __enter__(self) -> TableWriter:
        if self._path is None or self._partial is None:
            return self
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            if self._path.suffix.lower() == ".parquet":
                import pyarrow as pa
                import pyarrow.parquet as pq

                self._schema = pa.schema(
                    [(name, pa.int64() if name == "row" else pa.string()) for name in self._columns]
                )
                self._file = pq.ParquetWriter(self._partial, self._schema)
            else:
                self._file = self._partial.open("w", newline="", encoding="utf-8")
                self._csv = csv.DictWriter(self._file, fieldnames=self._columns)
                self._csv.writeheader()
        except OSError as error:
            raise InputError(f"{self._path}: cannot write it ({type(error).__name__})") from None
        return self

    def write(self, records: list[dict[str, Any]]) -> None:
        if self._file is None:
            return
        if self._csv is not None:
            self._csv.writerows(records)
            return
        self._pending += records
        if len(self._pending) >= self.ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            self._file.write_batch(arrays.record_batch(self._pending, self._schema))
            self._pending = []

    def __exit__(self, error_type: type[BaseException] | None, *_: object) -> None:
        if self._file is None or self._path is None or self._partial is None:
            return
        try:
            if error_type is None and self._csv is None:
                self._flush()
        finally:
            self._file.close()
        if error_type is None:
            self._partial.replace(self._path)
        else:
            # A half-read answer is not the answer: leave no file that looks like one.
            self._partial.unlink(missing_ok=True)
