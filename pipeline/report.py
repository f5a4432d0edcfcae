"""The output stage: one line per input row, in input order, as CSV, Parquet or JSON lines."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from pipeline.errors import InputError
from pipeline.models import FIELDS, Outcome, RowResult

#: Report columns, a contract other tools read; add new ones at the end.
COLUMNS: tuple[str, ...] = (
    "row",
    "conversation_id",
    "outcome",
    "http_status",
    "attempts",
    "error_code",
    "error_message",
    *(f"target_{name}" for name in FIELDS),
    *(f"returned_{name}" for name in FIELDS),
    "difference",
)
REPORT_FORMATS = (".csv", ".parquet", ".jsonl")


def cell(values: Mapping[str, str | None] | None, name: str) -> str | None:
    """A target or returned value as a report cell: empty = not set, "null" = JSON null.

    The same convention as the input's cells, so a report's rows can be fed back as input.
    """
    if values is None or name not in values:
        return None
    value = values[name]
    return "null" if value is None else value


def result_record(result: RowResult) -> dict[str, Any]:
    target = result.change.body()
    record: dict[str, Any] = {
        "row": result.row,
        "conversation_id": result.conversation_id,
        "outcome": result.outcome.value,
        "http_status": result.http_status,
        "attempts": result.attempts,
        "error_code": result.error_code,
        "error_message": result.error_message,
    }
    for name in FIELDS:
        record[f"target_{name}"] = cell(target, name)
    for name in FIELDS:
        record[f"returned_{name}"] = cell(result.returned, name)
    record["difference"] = result.difference
    return record


class _Writer(Protocol):
    def write(self, records: list[dict[str, Any]]) -> None: ...
    def close(self) -> None: ...


class _CsvWriter:
    def __init__(self, path: Path) -> None:
        self._file = path.open("w", newline="", encoding="utf-8")
        self._csv = csv.DictWriter(self._file, fieldnames=COLUMNS)
        self._csv.writeheader()

    def write(self, records: list[dict[str, Any]]) -> None:
        self._csv.writerows(records)

    def close(self) -> None:
        self._file.close()


class _JsonLinesWriter:
    def __init__(self, path: Path) -> None:
        self._file = path.open("w", encoding="utf-8")

    def write(self, records: list[dict[str, Any]]) -> None:
        self._file.writelines(json.dumps(record) + "\n" for record in records)

    def close(self) -> None:
        self._file.close()


class _ParquetWriter:
    def __init__(self, path: Path) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        integer = {"row": pa.int64(), "http_status": pa.int32(), "attempts": pa.int32()}
        self._schema = pa.schema([(name, integer.get(name, pa.string())) for name in COLUMNS])
        self._writer = pq.ParquetWriter(path, self._schema)
        self._pending: list[dict[str, Any]] = []
        self._pa = pa

    def write(self, records: list[dict[str, Any]]) -> None:
        self._pending += records
        if len(self._pending) >= 50_000:
            self._flush()

    def _flush(self) -> None:
        if self._pending:
            table = self._pa.Table.from_pylist(self._pending, schema=self._schema)
            self._writer.write_table(table)
            self._pending = []

    def close(self) -> None:
        self._flush()
        self._writer.close()


def check_report_path(path: Path) -> None:
    if path.suffix.lower() not in REPORT_FORMATS:
        raise InputError(
            f"--report {str(path)!r}: the suffix must be one of {', '.join(REPORT_FORMATS)}"
        )
    if path.is_dir():
        raise InputError(f"--report {str(path)!r} is a directory; give a file name")


def _open_writer(path: Path, suffix: str) -> _Writer:
    if suffix == ".parquet":
        return _ParquetWriter(path)
    if suffix == ".jsonl":
        return _JsonLinesWriter(path)
    return _CsvWriter(path)


class OrderedReport:
    """Takes results in any order and writes them in input order, with counts per outcome.

    Only results that arrive ahead of an earlier row wait in memory (rows still in a group or
    in flight), so the report streams whatever the size of the input. The file appears under
    its name only once complete.
    """

    def __init__(self, path: Path) -> None:
        check_report_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._partial = path.with_name(path.name + ".partial")
        self._writer = _open_writer(self._partial, path.suffix.lower())
        self._waiting: dict[int, RowResult] = {}
        self._next_row = 1
        self.counts: dict[Outcome, int] = {outcome: 0 for outcome in Outcome}
        self.differences = 0

    @property
    def done(self) -> int:
        return self._next_row - 1 + len(self._waiting)

    def add(self, results: Iterable[RowResult]) -> None:
        for result in results:
            self._waiting[result.row] = result
            self.counts[result.outcome] += 1
            if result.difference:
                self.differences += 1
        ready = []
        while self._next_row in self._waiting:
            ready.append(result_record(self._waiting.pop(self._next_row)))
            self._next_row += 1
        if ready:
            self._writer.write(ready)

    def close(self) -> None:
        """Finish the file; every row must have been added."""
        self._writer.close()
        if self._waiting:
            raise AssertionError(f"rows {sorted(self._waiting)[:5]} arrived after a gap")
        os.replace(self._partial, self.path)

    def abandon(self) -> None:
        self._writer.close()
        self._partial.unlink(missing_ok=True)
