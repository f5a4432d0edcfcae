"""The output stage: one line per input row, in input order, as CSV, Parquet or JSON lines."""

from __future__ import annotations

import csv
import functools
import io
import itertools
import json
import os
from collections.abc import Iterable, Iterator, Mapping, Set
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pipeline.core import arrays
from pipeline.core.errors import InputError
from pipeline.core.models import FIELDS, MAYBE_APPLIED, Outcome, RowResult, same_value
from pipeline.stages.journal_schema import RESULT_COLUMNS, stored_values

if TYPE_CHECKING:
    import pyarrow

    from pipeline.stages.reader import InputFile

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


# The report is written from columns: record batches of the journal's results table
# (`Journal.result_batches`), turned into report columns by Arrow's compute functions, with the
# JSON the journal keeps parsed once per distinct text. A million rows take seconds, not the
# minute that a record object per row would.

_INTEGERS = {"row": "int64", "http_status": "int32", "attempts": "int32"}
_BATCH_ROWS = 50_000


@functools.cache
def report_schema() -> pyarrow.Schema:
    import pyarrow as pa

    return pa.schema([(name, pa.type_for_alias(_INTEGERS.get(name, "string"))) for name in COLUMNS])


def report_batch(raw: pyarrow.RecordBatch) -> pyarrow.RecordBatch:
    """The report's columns for a batch of the journal's results columns (the same rows)."""
    import pyarrow as pa

    schema = report_schema()
    targets = _json_cells(raw.column("change"), _change_cells)
    returned = _json_cells(raw.column("returned"), _mapping_cells)
    before = _json_cells(raw.column("before"), _mapping_cells)
    columns: dict[str, Any] = {
        name: raw.column(name)
        for name in (
            "row",
            "conversation_id",
            "outcome",
            "http_status",
            "attempts",
            "error_code",
            "error_message",
            "difference",
        )
    }
    for position, name in enumerate(FIELDS):
        columns[f"target_{name}"] = targets[position]
        columns[f"returned_{name}"] = returned[position]
        columns[f"before_{name}"] = before[position]
    return pa.RecordBatch.from_arrays(
        [columns[field.name].cast(field.type) for field in schema], schema=schema
    )


def _change_cells(text: str) -> tuple[str | None, ...]:
    body = dict(json.loads(text))
    return tuple(cell(body, name) for name in FIELDS)


def _mapping_cells(text: str) -> tuple[str | None, ...]:
    values = json.loads(text)
    return tuple(cell(values, name) for name in FIELDS)


def _json_cells(column: pyarrow.Array, parse: Any) -> list[pyarrow.Array]:
    """Per FIELDS, the report cells a column of JSON texts gives, each text parsed once."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if column.null_count == len(column):
        return [pa.nulls(len(column), pa.string())] * len(FIELDS)
    encoded = pc.dictionary_encode(column)
    parsed = [parse(text) for text in encoded.dictionary.to_pylist()]
    return [
        pc.take(arrays.strings([cells[position] for cells in parsed]), encoded.indices)
        for position in range(len(FIELDS))
    ]


def raw_batches(results: Iterable[RowResult]) -> Iterator[pyarrow.RecordBatch]:
    """RowResults as record batches of the journal's results columns (what it would keep)."""
    import pyarrow as pa

    types = {"row": pa.int64(), "http_status": pa.int64(), "attempts": pa.int64()}
    schema = pa.schema([(name, types.get(name, pa.string())) for name in RESULT_COLUMNS])
    iterator = iter(results)
    while chunk := list(itertools.islice(iterator, _BATCH_ROWS)):
        columns = zip(*(stored_values(result) for result in chunk), strict=True)
        yield pa.RecordBatch.from_arrays(
            [
                arrays.strings(values) if field.type == pa.string() else arrays.integers(values)
                for values, field in zip(columns, schema, strict=True)
            ],
            schema=schema,
        )


class _Writer(Protocol):
    def write(self, batch: pyarrow.RecordBatch) -> None: ...
    def close(self) -> None: ...


class _CsvWriter:
    """CSV exactly as the csv module writes it (its default dialect, as `csv.DictWriter`):
    `,`, \\r\\n, a cell quoted only when it holds `,` `"` \\r or \\n, `"` doubled, None empty;
    the lines are built by Arrow's string kernels and written as one buffer per batch."""

    def __init__(self, path: Path, schema: pyarrow.Schema) -> None:
        header = io.StringIO()
        csv.writer(header).writerow(schema.names)  # the user's column names may need quotes
        self._file = path.open("wb")
        self._file.write(header.getvalue().encode())

    def write(self, batch: pyarrow.RecordBatch) -> None:
        if batch.num_rows:
            self._file.write(csv_lines(batch))

    def close(self) -> None:
        self._file.close()


def csv_lines(batch: pyarrow.RecordBatch) -> memoryview:
    """A record batch as CSV lines (no header), as the csv module's default dialect writes them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    columns = batch.columns
    # Columns empty on every line to the end (what a row not sent has: nothing returned or
    # read) are one run of commas, not columns to join.
    empty = 0
    while empty < len(columns) - 1 and columns[-1 - empty].null_count == len(batch):
        empty += 1
    quote = arrays.string('"')
    cells = []
    for column in columns[: len(columns) - empty]:
        if column.null_count == len(column):
            cells.append(pa.nulls(len(column), pa.string()))
            continue
        if not pa.types.is_string(column.type):
            cells.append(pc.cast(column, pa.string()))  # digits: never quoted
            continue
        text = column
        if _may_need_quotes(text):
            special = pc.fill_null(
                pc.match_substring_regex(text, '[,"\r\n]'), arrays.boolean(False)
            )
            # Quoted (and its quotes doubled) only where needed: usually a few cells.
            cells_to_quote = pc.filter(text, special)
            quoted = pc.binary_join_element_wise(
                quote, pc.replace_substring(cells_to_quote, '"', '""'), quote, arrays.string("")
            )
            text = pc.replace_with_mask(text, special, quoted)
        cells.append(text)
    lines = pc.binary_join_element_wise(
        *cells, arrays.string(","), null_handling="replace", null_replacement=""
    )
    lines = pc.binary_join_element_wise(
        lines, arrays.string(""), arrays.string("," * empty + "\r\n")
    )
    _, offsets, data = lines.buffers()
    ends = memoryview(offsets).cast("i")
    return memoryview(data)[ends[lines.offset] : ends[lines.offset + len(lines)]]


def _may_need_quotes(column: pyarrow.Array) -> bool:
    """Whether any of the column's text holds `,` `"` \\r or \\n, looked for in its bytes at
    once (uuids, outcomes and statuses never do): a yes is checked cell by cell."""
    data = column.buffers()[2]
    if data is None:
        return False
    text = data.to_pybytes()
    return any(special in text for special in (b",", b'"', b"\r", b"\n"))


class _JsonLinesWriter:
    def __init__(self, path: Path, schema: pyarrow.Schema) -> None:
        self._file = path.open("w", encoding="utf-8")

    def write(self, batch: pyarrow.RecordBatch) -> None:
        self._file.writelines(json.dumps(record) + "\n" for record in batch.to_pylist())

    def close(self) -> None:
        self._file.close()


class _ParquetWriter:
    def __init__(self, path: Path, schema: pyarrow.Schema) -> None:
        import pyarrow.parquet as pq

        # Dictionary pages only for the columns that repeat a few values: for row numbers and
        # conversation ids they cost a third of the writing time and save nothing.
        repeating = [name for name in COLUMNS if name not in ("row", "conversation_id")]
        self._writer = pq.ParquetWriter(path, schema, use_dictionary=repeating)

    def write(self, batch: pyarrow.RecordBatch) -> None:
        if batch.num_rows:
            self._writer.write_batch(batch)

    def close(self) -> None:
        self._writer.close()


def check_report_path(path: Path) -> None:
    if path.suffix.lower() not in REPORT_FORMATS:
        raise InputError(
            f"--report {str(path)!r}: the suffix must be one of {', '.join(REPORT_FORMATS)}"
        )
    if path.is_dir():
        raise InputError(f"--report {str(path)!r} is a directory; give a file name")


def _open_writer(path: Path, suffix: str, schema: pyarrow.Schema) -> _Writer:
    if suffix == ".parquet":
        return _ParquetWriter(path, schema)
    if suffix == ".jsonl":
        return _JsonLinesWriter(path, schema)
    return _CsvWriter(path, schema)


def write_report(results: Iterable[RowResult], path: Path) -> int:
    """Write results (in row order) to `path`, whose suffix picks the format; return the count.

    The file appears under its name only once complete, so a report is never half written.
    """
    return write_report_batches(raw_batches(results), path)


def write_report_batches(
    batches: Iterable[pyarrow.RecordBatch], path: Path, carried: InputCells | None = None
) -> int:
    """`write_report` for results given as record batches of the journal's results columns
    (`Journal.result_batches`), in row order; with the input's own columns `carried`."""
    with ReportWriter(path, carried) as report:
        for raw in batches:
            report.write(report_batch(raw))
    return report.rows


class ReportWriter:
    """A report written a batch of report columns (`report_schema`) at a time, in row order;
    it appears under its name only once complete (at the end of the `with` block), and not at
    all if the block raises. With `carried`, each line carries the input's own columns too
    (after the report's)."""

    def __init__(self, path: Path, carried: InputCells | None = None) -> None:
        import pyarrow as pa

        check_report_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.rows = 0
        self._carried = carried
        self._partial = path.with_name(path.name + ".partial")
        schema = report_schema()
        if carried is not None:
            schema = pa.schema([*schema, *(pa.field(name, pa.string()) for name in carried.labels)])
        self._writer = _open_writer(self._partial, path.suffix.lower(), schema)

    def write(self, batch: pyarrow.RecordBatch) -> None:
        if self._carried is not None:
            batch = self._carried.append_to(batch)
        self._writer.write(batch)
        self.rows += batch.num_rows

    def __enter__(self) -> ReportWriter:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._writer.close()
        if exc_type is None:
            os.replace(self._partial, self.path)
        else:
            self._partial.unlink(missing_ok=True)


class InputCells:
    """Cells of the input file's columns at `positions`, looked up by row number: how a report
    carries the user's own columns (a note, a ticket number) and the fix-and-rerun file the
    cells as written.

    The file is read alongside the report, both in row order, so only the rows between the
    report's current batch and the input's current chunk are held; a batch of lower rows than
    the last (not the case in any report written today) reads the file again from the start.
    """

    def __init__(
        self,
        input_file: InputFile,
        positions: Iterable[int],
        taken: Iterable[str] = COLUMNS,
        only: Set[int] | None = None,
    ) -> None:

        self._input_file = input_file
        self.positions = list(positions)
        self._only = only
        #: The columns' names in the report: as in the input, unless the report has a column
        #: of that name (then `input_` goes before it), or an earlier column took it.
        self.labels: list[str] = []
        used = set(taken)
        for position in self.positions:
            label = input_file.header[position]
            if label in used:
                label = f"input_{label}"
            while label in used:
                label += "_"
            used.add(label)
            self.labels.append(label)
        self._source: Iterator[tuple[pyarrow.Array, list[pyarrow.Array]]] | None = None
        self._rows: pyarrow.Array = arrays.integers([])
        self._cells: list[pyarrow.Array] = [arrays.strings([]) for _ in self.positions]
        self._held_from = 0  # rows below it were let go
        self._ended = False

    @classmethod
    def carried(cls, input_file: InputFile) -> InputCells | None:
        """The user's columns that the run does not read, or None when there are none."""
        positions = input_file.passthrough()
        return cls(input_file, positions) if positions else None

    def take(self, rows: pyarrow.Array) -> list[pyarrow.Array]:
        """One array per column: the cells of `rows` (ascending row numbers); null for a row
        the input does not have."""
        import pyarrow as pa
        import pyarrow.compute as pc

        if not len(rows):
            return [arrays.strings([]) for _ in self.positions]
        low, high = pc.min(rows).as_py(), pc.max(rows).as_py()
        if self._source is None or low < self._held_from:
            self._source = self._input_file.cells(self.positions, only=self._only)
            self._rows = arrays.integers([])
            self._cells = [arrays.strings([]) for _ in self.positions]
            self._held_from, self._ended = 0, False
        held = [self._rows] if len(self._rows) else []
        cells = [[column] for column in self._cells]
        last = self._rows[-1].as_py() if len(self._rows) else 0
        while last < high and not self._ended:
            chunk = next(self._source, None)
            if chunk is None:
                self._ended = True
                break
            numbers, columns = chunk
            if not len(numbers) or numbers[-1].as_py() < low:
                continue  # rows before the batch: not needed
            held.append(numbers)
            for kept, column in zip(cells, columns, strict=True):
                kept.append(column)
            last = numbers[-1].as_py()
        if held:
            self._rows = pa.concat_arrays(held)
            self._cells = [pa.concat_arrays(kept) for kept in cells]
        # Let go of the rows below this batch: the next batch starts after it.
        keep = pc.greater_equal(self._rows, arrays.integer(low))
        self._rows = pc.filter(self._rows, keep)
        self._cells = [pc.filter(column, keep) for column in self._cells]
        self._held_from = low
        where = pc.index_in(rows, value_set=self._rows)
        return [pc.take(column, where) for column in self._cells]

    def append_to(self, batch: pyarrow.RecordBatch) -> pyarrow.RecordBatch:
        """`batch` with the columns appended, matched on its `row` column."""
        import pyarrow as pa

        taken = self.take(batch.column("row"))
        return pa.RecordBatch.from_arrays(
            [*batch.columns, *taken], names=[*batch.schema.names, *self.labels]
        )


def unsent_batch(columns: Mapping[str, pyarrow.Array]) -> pyarrow.RecordBatch:
    """Report columns for rows that were not sent (a dry run's), from `row`, `conversation_id`,
    `outcome`, `error_message` and `target_<field>` columns (report cells: a value, "null", or
    null for a field left unchanged): no status, no attempt, nothing returned or read."""
    import pyarrow as pa

    schema = report_schema()
    size = len(columns["row"])
    filled = {**columns, "attempts": pa.repeat(arrays.integer(0), size)}
    return pa.RecordBatch.from_arrays(
        [
            filled[field.name].cast(field.type)
            if field.name in filled
            else pa.nulls(size, field.type)
            for field in schema
        ],
        schema=schema,
    )


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
    chunks = iter(lambda: list(itertools.islice(remaining, _BATCH_ROWS)), [])
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
