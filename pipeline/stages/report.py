"""The output stage: one line per input row, in input order, as CSV, Parquet or JSON lines.

What a line holds is `report_columns`'s; the files written beside the report (failures, plan,
undo) are `side_files`'s."""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Iterator, Set
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from pipeline.core import arrays
from pipeline.core.errors import InputError
from pipeline.core.models import RowResult
from pipeline.stages.report_columns import COLUMNS, raw_batches, report_batch, report_schema

if TYPE_CHECKING:
    import pyarrow

    from pipeline.stages.input.input_file import InputFile

REPORT_FORMATS = (".csv", ".parquet", ".jsonl")


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
