"""The files a run writes beside its report: the failures (an input file to fix and run
again), the plan (`mateo-bulk plan`, and the input `apply` sends from it) and the undo file."""

from __future__ import annotations

import csv
import itertools
from collections.abc import Iterable, Iterator, Set
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core import arrays
from pipeline.core.errors import InputError
from pipeline.core.models import FIELDS, MAYBE_APPLIED, Outcome, RowResult, same_value
from pipeline.stages.report import InputCells
from pipeline.stages.report_columns import BATCH_ROWS, cell

if TYPE_CHECKING:
    from pipeline.stages.input.input_file import InputFile


#: Columns of the failures file: a valid input for another run, with why each row failed;
#: the input's own columns follow them (as `InputCells` names them).
FAILURE_COLUMNS: tuple[str, ...] = (
    "conversation_id",
    *FIELDS,
    "row",
    "outcome",
    "http_status",
    "error_code",
    "error_message",
)
#: The rows a fix-and-rerun file holds.
FAILING_OUTCOMES = (Outcome.FAILED, Outcome.REJECTED, Outcome.INVALID)


def write_failures(
    results: Iterable[RowResult], path: Path, input_file: InputFile, rows: Set[int]
) -> int:
    """The failed, rejected and invalid rows (`results`, in row order; their numbers `rows`)
    as an input file (CSV or Parquet by suffix), their cells as the input has them, and why
    each failed: fix them, run the file again. Only their cells are read from the input."""
    read_from = input_file.field_positions()
    fields = [field for field in ("conversation_id", *FIELDS) if field in read_from]
    cells = InputCells(
        input_file,
        [read_from[field] for field in fields] + input_file.passthrough(),
        taken=FAILURE_COLUMNS,
        only=rows,
    )
    carried = cells.labels[len(fields) :]

    def records(chunk: list[RowResult]) -> Iterator[dict[str, Any]]:
        written = cells.take(arrays.integers([result.row for result in chunk]))
        columns = [column.to_pylist() for column in written]
        for at, result in enumerate(chunk):
            record = dict.fromkeys(FAILURE_COLUMNS, "")
            for field, column in zip(fields, columns, strict=False):
                record[field] = column[at] or ""
            record.update(
                row=str(result.row),
                outcome=result.outcome.value,
                http_status="" if result.http_status is None else str(result.http_status),
                error_code=result.error_code or "",
                error_message=result.error_message or "",
            )
            for label, column in zip(carried, columns[len(fields) :], strict=True):
                record[label] = column[at] or ""
            yield record

    remaining = iter(results)
    chunks = iter(lambda: list(itertools.islice(remaining, BATCH_ROWS)), [])
    lines = itertools.chain.from_iterable(records(chunk) for chunk in chunks)
    return _write_rows(lines, (*FAILURE_COLUMNS, *carried), path)


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


def write_undo(
    results: Iterable[RowResult], path: Path, api_sets: frozenset[str] = frozenset()
) -> int:
    """For each row the run changed, its values before the run, as an input file: `run` it to undo.

    Rows `updated` and rows whose PATCH may have landed unconfirmed (error_code maybe_applied)
    are undone, when their before-values are known. Every field the run changed is restored:
    the ones it asked to change, and any other that changed with them (a proxy filling a
    default). A row judged from a read long after its PATCH (a resumed row, attempts 0) gets
    back only the fields it asked to change and those the run saw the API set unasked
    (`api_sets`, from the whole journal): any other change may be someone else's. Each row
    expects (expect_* columns) the values the run left, so an undo never overwrites a change
    someone made after the run: such a row ends `conflict`, and so does a maybe-applied row
    that was not applied after all. Streamed, in the input's format; no file when no row has
    values to restore.
    """
    columns = ("conversation_id", *FIELDS, *(f"expect_{name}" for name in FIELDS))
    records = (
        _undo_record(result, api_sets)
        for result in results
        if result.before is not None
        and (result.outcome is Outcome.UPDATED or result.error_code == MAYBE_APPLIED)
    )
    return _write_rows((record for record in records if record), columns, path)


def _undo_record(result: RowResult, api_sets: frozenset[str]) -> dict[str, str] | None:
    before = result.before or {}
    target = result.change.body()
    left = {**target, **(result.returned or {})}  # what the run left: returned, else target
    read_later = result.outcome is Outcome.UPDATED and result.attempts == 0
    restore = [
        name
        for name in FIELDS
        if name in before
        and (
            name in target
            or (
                name in left
                and not same_value(left[name], before[name])
                and (name in api_sets or not read_later)
            )
        )
    ]
    if not restore:
        return None
    # The status is expected as the run left it even when it is not restored: a proxy that fills
    # in `status: open` for a body without it would otherwise reopen a conversation someone
    # closed after the run. Three values at most, so undo groups barely split.
    guarded = [*restore, *(["status"] if "status" in left and "status" not in restore else [])]
    record = {"conversation_id": result.conversation_id}
    for name in FIELDS:
        record[name] = (cell(before, name) or "") if name in restore else ""
        record[f"expect_{name}"] = (cell(left, name) or "") if name in guarded else ""
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
            self._file: Any = pq.ParquetWriter(path, self._schema)
        else:
            self._file = path.open("w", newline="", encoding="utf-8")
            self._csv = csv.DictWriter(self._file, fieldnames=columns)
            self._csv.writeheader()

    def __call__(self, batch: list[dict[str, Any]]) -> None:
        if self._parquet:
            self._file.write_batch(arrays.record_batch(batch, self._schema))
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
