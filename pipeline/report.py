"""The output stage: one line per input row, in input order, as CSV, Parquet or JSON lines."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from pipeline.errors import InputError
from pipeline.models import FIELDS, MAYBE_APPLIED, Outcome, RowResult, same_value

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
    *(f"before_{name}" for name in FIELDS),
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
    for name in FIELDS:
        record[f"before_{name}"] = cell(result.before, name)
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


def write_report(results: Iterable[RowResult], path: Path) -> int:
    """Write results (in row order) to `path`, whose suffix picks the format; return the count.

    The file appears under its name only once complete, so a report is never half written.
    """
    check_report_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    writer = _open_writer(partial, path.suffix.lower())
    written = 0
    try:
        batch: list[dict[str, Any]] = []
        for result in results:
            batch.append(result_record(result))
            if len(batch) >= 10_000:
                writer.write(batch)
                written += len(batch)
                batch = []
        writer.write(batch)
        written += len(batch)
    except BaseException:
        writer.close()
        partial.unlink(missing_ok=True)
        raise
    writer.close()
    os.replace(partial, path)
    return written


#: Columns of the failures file: a valid input for another run, with why each row failed.
FAILURE_COLUMNS: tuple[str, ...] = (
    "conversation_id",
    *FIELDS,
    "row",
    "outcome",
    "http_status",
    "error_code",
    "error_message",
)


def write_failures(results: Iterable[RowResult], path: Path) -> int:
    """The failed and rejected rows as an input file (CSV or Parquet by suffix): fix, run again."""

    def record(result: RowResult) -> dict[str, Any]:
        target = result.change.body()
        return {
            "conversation_id": result.conversation_id,
            **{name: cell(target, name) or "" for name in FIELDS},
            "row": str(result.row),
            "outcome": result.outcome.value,
            "http_status": "" if result.http_status is None else str(result.http_status),
            "error_code": result.error_code or "",
            "error_message": result.error_message or "",
        }

    return _write_rows((record(result) for result in results), FAILURE_COLUMNS, path)


#: What `plan` decided for each row, by outcome of the snapshot.
_DECISIONS = {
    "planned": "change",
    "unchanged": "unchanged",
    "not_found": "not_found",
    "invalid": "invalid",
    "conflict": "conflict",
    "failed": "unknown",
    "skipped": "unknown",
}
PLAN_COLUMNS: tuple[str, ...] = (
    "row",
    "conversation_id",
    "decision",
    *(f"before_{name}" for name in FIELDS),
    *(f"after_{name}" for name in FIELDS),
    "reason",
)


def write_plan(results: Iterable[RowResult], path: Path) -> tuple[dict[str, int], list[int]]:
    """The plan file (one row per input row: before, after, decision).

    Returns the transitions ("field: before -> after" with the number of rows making it) and
    the sizes of the groups apply will send (rows sharing one change and one before).
    """
    transitions: dict[str, int] = {}
    groups: dict[tuple[object, ...], int] = {}
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=PLAN_COLUMNS)
        writer.writeheader()
        for result in results:
            target = result.change.body()
            before = result.before if result.before is not None else result.returned
            decision = _DECISIONS.get(result.outcome.value, result.outcome.value)
            record: dict[str, Any] = {
                "row": result.row,
                "conversation_id": result.conversation_id,
                "decision": decision,
                "reason": result.error_message,
            }
            for name in FIELDS:
                record[f"before_{name}"] = cell(before, name)
                record[f"after_{name}"] = cell(target, name)
            writer.writerow(record)
            if decision == "change":
                # apply guards each row by the before-values of the fields it changes only
                guard = {name: (before or {}).get(name) for name in target}
                group = (result.change, tuple(sorted(guard.items())))
                groups[group] = groups.get(group, 0) + 1
                for name in target:
                    old, new = cell(before, name) or "?", cell(target, name)
                    if old.lower() != (new or "").lower():
                        key = f"{name}: {old} -> {new}"
                        transitions[key] = transitions.get(key, 0) + 1
    return transitions, list(groups.values())


def write_undo(results: Iterable[RowResult], path: Path) -> int:
    """For each row the run changed, its values before the run, as an input file: `run` it to undo.

    Rows `updated` and rows whose PATCH may have landed unconfirmed (error_code maybe_applied)
    are undone, when their before-values are known. Every field the run changed is restored:
    the ones it asked to change, and any other that changed with them (a proxy filling a
    default). Each row expects (expect_* columns) the values the run left, so an undo never
    overwrites a change someone made after the run: such a row ends `conflict`, and so does a
    maybe-applied row that was not applied after all. Streamed, in the input's format; no file
    when no row has values to restore.
    """
    columns = ("conversation_id", *FIELDS, *(f"expect_{name}" for name in FIELDS))
    records = (
        _undo_record(result)
        for result in results
        if result.before is not None
        and (result.outcome is Outcome.UPDATED or result.error_code == MAYBE_APPLIED)
    )
    return _write_rows((record for record in records if record), columns, path)


def _undo_record(result: RowResult) -> dict[str, str] | None:
    before = result.before or {}
    target = result.change.body()
    left = {**target, **(result.returned or {})}  # what the run left: returned, else target
    restore = [
        name
        for name in FIELDS
        if name in before
        and (name in target or (name in left and not same_value(left[name], before[name])))
    ]
    if not restore:
        return None
    record = {"conversation_id": result.conversation_id}
    for name in FIELDS:
        record[name] = (cell(before, name) or "") if name in restore else ""
        record[f"expect_{name}"] = (cell(left, name) or "") if name in restore else ""
    return record


def _write_rows(records: Iterable[dict[str, Any]], columns: tuple[str, ...], path: Path) -> int:
    """Stream records of string cells to a CSV or Parquet file; none written when empty."""
    written = 0
    batch: list[dict[str, Any]] = []
    writer: Any = None
    try:
        for record in records:
            batch.append(record)
            if len(batch) >= 10_000:
                writer = writer or _RowsWriter(columns, path)
                writer(batch)
                written += len(batch)
                batch = []
        if batch:
            writer = writer or _RowsWriter(columns, path)
            writer(batch)
            written += len(batch)
    finally:
        if writer is not None:
            writer.close()
    return written


class _RowsWriter:
    """Writes batches of records to CSV or Parquet (by the path's suffix)."""

    def __init__(self, columns: tuple[str, ...], path: Path) -> None:
        self._parquet = path.suffix.lower() == ".parquet"
        if self._parquet:
            import pyarrow as pa
            import pyarrow.parquet as pq

            self._schema = pa.schema([(name, pa.string()) for name in columns])
            self._pa = pa
            self._file: Any = pq.ParquetWriter(path, self._schema)
        else:
            self._file = path.open("w", newline="", encoding="utf-8")
            self._csv = csv.DictWriter(self._file, fieldnames=columns)
            self._csv.writeheader()

    def __call__(self, batch: list[dict[str, Any]]) -> None:
        if self._parquet:
            self._file.write_table(self._pa.Table.from_pylist(batch, schema=self._schema))
        else:
            self._csv.writerows(batch)

    def close(self) -> None:
        self._file.close()


def plan_to_input(plan_path: Path, path: Path, *, guarded: bool = True) -> int:
    """The `change` rows of a plan file as an input file: targets, and expect_* = before.

    With `guarded`, a change row without the before-values of a field it changes is refused:
    applied without them it could overwrite a row someone changed since the plan.
    """
    try:
        with plan_path.open(newline="", encoding="utf-8") as file:
            reader = csv.DictReader(file)
            missing = set(PLAN_COLUMNS) - set(reader.fieldnames or ())
            if missing:
                raise InputError(
                    f"{plan_path} is not a plan file (no {', '.join(sorted(missing))} column); "
                    "make one with `mateo-bulk plan`"
                )
            rows = [row for row in reader if row["decision"] == "change"]
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{plan_path}: cannot read it ({type(error).__name__})") from None
    for row in rows if guarded else ():
        unknown = [name for name in FIELDS if row[f"after_{name}"] and not row[f"before_{name}"]]
        if unknown:
            raise InputError(
                f"{plan_path}: row {row['row']} has no before-value for {unknown[0]}, so "
                "applying it could overwrite a change made since the plan; make the plan "
                "again (or apply with --no-guard)"
            )
    columns = ("conversation_id", *FIELDS, *(f"expect_{name}" for name in FIELDS))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            record = {"conversation_id": row["conversation_id"]}
            for name in FIELDS:
                target = row[f"after_{name}"]
                record[name] = target
                record[f"expect_{name}"] = row[f"before_{name}"] if target else ""
            writer.writerow(record)
    return len(rows)
