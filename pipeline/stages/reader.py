"""The read stage: stream the rows of a CSV or Parquet file in chunks.

Everything that can be wrong with the file as a whole (missing, binary, not UTF-8, no id column,
no rows) is checked by `open_input` before a single row is handed on, and raised as an
`InputError` with one line that says what to do. Problems only found further in (a bad byte at
line 800,000, a row with too many fields) raise the same error naming the line; the pipeline reads
the file once to validate before it sends anything, so those still stop the run before a request.

Cells are read as the exact text written: no NaN, no type guessing. What a cell means is decided
in `pipeline.stages.validate`.
"""

from __future__ import annotations

import codecs
import csv
import dataclasses
import hashlib
import io
import operator
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence, Set
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import chain, compress, count, islice, repeat
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

from pipeline.core import arrays
from pipeline.core.errors import InputError
from pipeline.core.models import FIELDS

if TYPE_CHECKING:
    import pyarrow

#: The field naming the conversation a row changes; with FIELDS, what `column_map` may rename.
ID_FIELD = "conversation_id"
#: Optional columns of the values a row must still hold to be changed (undo files use them).
EXPECT_FIELDS: tuple[str, ...] = tuple(f"expect_{field}" for field in FIELDS)
MAPPABLE_FIELDS: tuple[str, ...] = (ID_FIELD, *FIELDS, *EXPECT_FIELDS)
#: Delimiters detected from the header line, in the order that wins a tie.
DELIMITERS: tuple[str, ...] = (",", ";", "\t", "|")
CSV_SUFFIXES = frozenset({".csv", ".tsv", ".txt"})
PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})
#: Rows per chunk: each chunk's rows are in memory as Python and Arrow objects at once (about
#: 20 MB for 20,000 rows); larger chunks cost memory and gain almost no time.
DEFAULT_CHUNK_ROWS = 20_000

_SNIFF_BYTES = 64 * 1024
_HASH_BLOCK = 1024 * 1024
#: CSV is decoded and split into lines a block at a time, so that the csv module pulls its lines
#: from a list at C speed instead of from a Python generator, one call per line.
_TEXT_BLOCK = 1024 * 1024
#: A physical line longer than this is refused rather than read whole: a file with no line ends
#: (a sparse or binary file past its first block) would otherwise be loaded into memory.
_MAX_LINE_CHARS = 1024 * 1024
_BOM = codecs.BOM_UTF8
#: Characters str.splitlines() breaks at but a CSV file's lines do not (only \n, \r\n, \r do,
#: as io.TextIOWrapper(newline="") splits them): a block holding one is split by _LINE instead.
_OTHER_LINE_BREAKS = ("\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")
_DELIMITER_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}

_EXCEL_ADVICE = 'in Excel use File > Save As > "CSV UTF-8" and pass that file'
#: Workbooks are read as they are, by their suffix, so the advice is to give them the right one.
_WORKBOOK_ADVICE = "rename it to {} and pass it as it is (--sheet NAME picks a sheet)"
#: Leading bytes of files people save as .csv by mistake, what they are, and what to do.
_MAGIC: tuple[tuple[bytes, str, str], ...] = (
    (b"PK\x03\x04", "a zip archive (an Excel .xlsx workbook?)", _WORKBOOK_ADVICE.format(".xlsx")),
    (b"PK\x05\x06", "an empty zip archive", _EXCEL_ADVICE),
    (
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
        "an old Excel .xls workbook",
        _WORKBOOK_ADVICE.format(".xls"),
    ),
    (b"PAR1", "a Parquet file", "rename it to .parquet"),
    (b"\x1f\x8b", "gzip-compressed", "decompress it first"),
    (b"%PDF", "a PDF document", "export the data as CSV UTF-8"),
    (b"\xff\xfe", "UTF-16 text", "re-save it as UTF-8"),
    (b"\xfe\xff", "UTF-16 text", "re-save it as UTF-8"),
)


@dataclass(frozen=True, slots=True)
class InputRow:
    """One data row as written: its 1-based row number, its id cell and the raw field cells."""

    #: 1-based data row (the header is not counted; a CSV record spanning lines is one row).
    row: int
    conversation_id: str
    #: Raw text of inbox_id, assignee_id, status (FIELDS order); None for a column the file lacks.
    cells: tuple[str | None, str | None, str | None]
    #: Raw text of the expect_* columns (FIELDS order), when the file has any.
    expected: tuple[str | None, str | None, str | None] = (None, None, None)
    #: Why the row is invalid for what its cells are (see RowBatch.problems), or None.
    problem: str | None = None


@dataclass(frozen=True, slots=True)
class RowBatch:
    """Consecutive data rows as columns: what `InputFile.batches()` yields.

    Every column is a pyarrow string array without nulls holding the cells as written (an empty
    cell is ""), one entry per row; a column the file lacks is None.
    """

    #: 1-based data row numbers (int64), ascending; blank rows are left out, so there may be gaps.
    rows: pyarrow.Array
    conversation_id: pyarrow.Array
    #: inbox_id, assignee_id, status (FIELDS order).
    cells: tuple[pyarrow.Array | None, ...]
    #: expect_inbox_id, expect_assignee_id, expect_status (FIELDS order).
    expected: tuple[pyarrow.Array | None, ...]
    #: Why a row is invalid for what its cells are rather than what they say (a spreadsheet's
    #: number where a uuid belongs), one string or null per row; None when no row has such a
    #: problem. Those cells are given as empty ones.
    problems: pyarrow.Array | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def input_rows(self) -> list[InputRow]:
        """The same rows as InputRow records."""
        columns: list[Any] = [
            repeat(None) if column is None else column.to_pylist()
            for column in (*self.cells, *self.expected)
        ]
        # strict=False: an absent column is an endless repeat(None).
        rows = zip(self.rows.to_pylist(), self.conversation_id.to_pylist(), *columns, strict=False)
        if all(column is None for column in self.expected):
            made = [InputRow(number, cid, (a, b, c)) for number, cid, a, b, c, *_ in rows]
        else:
            made = [
                InputRow(number, cid, (a, b, c), (x, y, z))
                for number, cid, a, b, c, x, y, z in rows
            ]
        if self.problems is not None:
            problems = self.problems.to_pylist()
            made = [
                row if problem is None else dataclasses.replace(row, problem=problem)
                for row, problem in zip(made, problems, strict=True)
            ]
        return made


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """Identifies an input file's exact bytes, so a resumed run knows it reads the same file."""

    size: int
    sha256: str

    def __str__(self) -> str:
        return f"{self.size}:{self.sha256}"


class InputFile:
    """An input file whose file-level checks passed; `chunks()` streams its rows.

    Use it as a context manager: rows read from stdin live in a temporary file until `close()`.
    """

    def __init__(
        self,
        path: Path,
        *,
        name: str,
        format: Literal["csv", "parquet", "spreadsheet"],
        header: Sequence[str],
        indexes: Mapping[str, int],
        delimiter: str | None,
        temporary: bool = False,
        not_cells: Sequence[int] = (),
        lines_before_header: int = 0,
    ) -> None:
        self.path = path
        #: How messages name the file: the path as given, or "stdin".
        self.name = name
        self.format = format
        #: Every column's name as written, in file order.
        self.header = tuple(header)
        #: Resolved field -> column name as written in the file.
        self.columns: Mapping[str, str] = {field: header[at] for field, at in indexes.items()}
        self.delimiter = delimiter
        self._indexes = dict(indexes)
        self._width = len(header)
        #: CSV records before the first row: the header, and Excel's `sep=` line before it.
        self._before_rows = lines_before_header + 1
        #: Positions of columns whose values are not single cells (Parquet lists, structs).
        self._not_cells = frozenset(not_cells)
        #: What the user should hear about the file's columns before anything is sent.
        self.warnings = _look_alike_columns(self.header, self._indexes)
        self._temporary = temporary
        self._on_close: list[Callable[[], object]] = []

    def __repr__(self) -> str:
        return f"<InputFile {self.name!r} {self.format} columns={self.columns}>"

    def __enter__(self) -> InputFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Remove the temporary copy of stdin, if there is one, and what `on_close` was given."""
        while self._on_close:
            self._on_close.pop()()
        if self._temporary:
            self._temporary = False
            self.path.unlink(missing_ok=True)

    def on_close(self, callback: Callable[[], object]) -> None:
        """Call `callback` when the file is closed: what was made from its rows goes with it."""
        self._on_close.append(callback)

    def describe_row(self, row: int) -> str:
        """How messages name a data row: "row 5" (a sheet of a workbook: "Sheet1, row 5")."""
        return f"row {row}"

    def version(self) -> tuple[int, int, int]:
        """Size, modification time and inode: changes whenever the file is rewritten."""
        status = self.path.stat()
        return status.st_size, status.st_mtime_ns, status.st_ino

    def fingerprint(self) -> Fingerprint:
        """The size and sha256 of the file's bytes, read in blocks."""
        digest = hashlib.sha256()
        size = 0
        with _open_binary(self.path, self.name) as file:
            while block := file.read(_HASH_BLOCK):
                digest.update(block)
                size += len(block)
        return Fingerprint(size, digest.hexdigest())

    def chunks(self, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[list[InputRow]]:
        """Yield the data rows in lists of at most `chunk_rows`, from the start on every call."""
        return (batch.input_rows() for batch in self.batches(chunk_rows))

    def batches(self, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[RowBatch]:
        """Yield the data rows as columns, at most `chunk_rows` at a time, from the start on
        every call; the same rows, cells and errors as `chunks()`."""
        if chunk_rows < 1:
            raise ValueError("chunk_rows must be at least 1")
        if self.format == "csv":
            return self._csv_batches(chunk_rows)
        return self._parquet_batches(chunk_rows)

    def passthrough(self) -> list[int]:
        """The positions of the columns the run does not read (a note, a ticket number): the
        report carries them along, after its own. (Parquet columns of lists or structs hold
        no single cell: they are left out.)"""
        read = set(self._indexes.values()) | self._not_cells
        return [index for index in range(len(self.header)) if index not in read]

    def field_positions(self) -> dict[str, int]:
        """field -> position of the column it is read from."""
        return dict(self._indexes)

    def cells(
        self,
        positions: Sequence[int],
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        only: Set[int] | None = None,
    ) -> Iterator[tuple[pyarrow.Array, list[pyarrow.Array]]]:
        """The cells of the columns at `positions`, as written, with their rows' numbers (as
        `batches()` numbers them), a chunk of rows at a time in row order; of the rows in
        `only`, when given (a few failed rows of a big file: the others are skipped unread).

        The file passed every check when it was opened; it is read again here, by the csv
        module, which numbers rows exactly as the first pass did.
        """
        if self.format == "parquet":
            names = [self.header[at] for at in positions]
            if only is None:
                yield from self._parquet_cells(names, chunk_rows)
            else:
                yield self._parquet_rows(names, chunk_rows, only)
            return
        field_at = {index: field for field, index in self._indexes.items()}
        if all(at in field_at for at in positions):
            # Only columns the run reads: the first pass's reader (pyarrow's, for a plain file)
            # hands them over as written, several times faster than the csv module.
            yield from self._field_cells([field_at[at] for at in positions], chunk_rows, only)
            return
        done = 0
        with _csv_reader(self.path, self.name, self.delimiter or ",") as reader:
            for _ in islice(reader, self._before_rows):  # the header
                pass
            while records := list(islice(reader, chunk_rows)):
                first = done + 1
                done += len(records)
                if only is None:
                    numbers = list(range(first, done + 1))
                else:
                    numbers = [number for number in range(first, done + 1) if number in only]
                    records = [records[number - first] for number in numbers]
                yield (
                    arrays.integers(numbers),
                    [
                        arrays.strings(
                            [record[at] if at < len(record) else "" for record in records]
                        )
                        for at in positions
                    ],
                )

    def _field_cells(
        self, fields: Sequence[str], chunk_rows: int, only: Set[int] | None
    ) -> Iterator[tuple[pyarrow.Array, list[pyarrow.Array]]]:
        def read() -> Iterator[tuple[pyarrow.Array, list[pyarrow.Array]]]:
            for batch in self.batches(chunk_rows):
                columns = (batch.conversation_id, *batch.cells, *batch.expected)
                by_field = dict(zip(MAPPABLE_FIELDS, columns, strict=True))
                yield batch.rows, [by_field[field] for field in fields]

        yield from _only(read(), only)

    def _parquet_cells(
        self, names: Sequence[str], chunk_rows: int
    ) -> Iterator[tuple[pyarrow.Array, list[pyarrow.Array]]]:
        parquet_file, _, _ = _open_parquet(self.path, self.name)
        done = 0
        for batch in parquet_file.iter_batches(
            batch_size=chunk_rows, columns=list(dict.fromkeys(names)), use_threads=False
        ):
            numbers = _row_numbers(done + 1, batch.num_rows)
            done += batch.num_rows
            yield numbers, [_string_array(batch.column(name)) for name in names]

    def _parquet_rows(
        self, names: Sequence[str], chunk_rows: int, only: Set[int]
    ) -> tuple[pyarrow.Array, list[pyarrow.Array]]:
        """The cells of the rows `only` (a few), read a column at a time: a row group is decoded
        whole, and a million-row one of several columns would add its size to the peak."""
        import pyarrow as pa

        found: list[pyarrow.Array] = []
        numbers = None
        for name in names:
            chunks = _only(self._parquet_cells([name], chunk_rows), only)
            rows, cells = zip(*((kept, columns[0]) for kept, columns in chunks), strict=True)
            numbers = pa.concat_arrays(list(rows))
            found.append(pa.concat_arrays(list(cells)))
        assert numbers is not None
        return numbers, found

    def _csv_batches(self, chunk_rows: int) -> Iterator[RowBatch]:
        delimiter = self.delimiter or ","
        done = 0  # records read so far, blank ones included: the next row's number - 1
        end = _plain_csv(self.path)
        if end is not None:
            try:
                for batch, handed_out in self._arrow_csv_batches(chunk_rows, delimiter, end):
                    done = handed_out
                    yield batch
                return
            except _NotPlain:
                pass  # the csv module goes on from the row after the last one handed out
        yield from self._python_csv_batches(chunk_rows, delimiter, done)

    def _arrow_csv_batches(
        self, chunk_rows: int, delimiter: str, end: int
    ) -> Iterator[tuple[RowBatch, int]]:
        """The rows of a plain file (`_plain_csv`: its first `end` bytes) read by pyarrow's CSV
        reader with quoting off: the same cells as the csv module's, several times faster. A
        row it cannot read as the csv module would (an empty line, a row of another width,
        bytes that are not UTF-8) raises _NotPlain, after the rows before it; each batch comes
        with the number of rows handed out so far."""
        with _Bounded(self.path, end) as source:
            yield from self._arrow_csv_rows(source, chunk_rows, delimiter)

    def _arrow_csv_rows(
        self, source: _Bounded, chunk_rows: int, delimiter: str
    ) -> Iterator[tuple[RowBatch, int]]:
        import pyarrow as pa
        import pyarrow.csv as pa_csv

        names = [str(index) for index in range(self._width)]
        try:
            reader = pa_csv.open_csv(
                pa.PythonFile(source, mode="r"),
                read_options=pa_csv.ReadOptions(
                    # Its parser keeps ~20x the block in memory: small blocks, rows regrouped.
                    column_names=names,
                    skip_rows=self._before_rows,
                    block_size=256 * 1024,
                    use_threads=False,
                ),
                parse_options=pa_csv.ParseOptions(
                    delimiter=delimiter,
                    quote_char=False,
                    newlines_in_values=False,
                    ignore_empty_lines=False,
                ),
                convert_options=pa_csv.ConvertOptions(
                    column_types=dict.fromkeys(names, pa.string()), strings_can_be_null=False
                ),
            )
        except (pa.ArrowException, OSError):
            raise _NotPlain from None
        done = 0
        pending: list[pyarrow.RecordBatch] = []
        pending_rows = 0
        ended = False
        while not ended:
            try:
                batch = reader.read_next_batch()
                pending.append(batch)
                pending_rows += batch.num_rows
            except StopIteration:
                ended = True
            except (pa.ArrowException, OSError):
                raise _NotPlain from None
            while pending_rows >= chunk_rows or (ended and pending_rows):
                table = pa.Table.from_batches(pending)
                chunk = table.slice(0, chunk_rows)
                rest = table.slice(chunk_rows)
                pending, pending_rows = rest.to_batches(), rest.num_rows
                columns = [column.combine_chunks() for column in chunk.columns]
                row_batch = self._columns_batch(columns, done)
                done += chunk.num_rows
                if row_batch is not None:
                    yield row_batch, done

    def _columns_batch(self, columns: list[pyarrow.Array], done: int) -> RowBatch | None:
        """A RowBatch of records given as one string array per column of the file."""
        import pyarrow.compute as pc

        ids = columns[self._indexes[ID_FIELD]]
        numbers = _row_numbers(done + 1, len(ids))
        # Blank rows, as the csv module path skips them: only an id cell without a letter or a
        # digit can be blank, and those few are looked at in Python.
        maybe = pc.indices_nonzero(pc.invert(pc.match_substring_regex(ids, "[0-9A-Za-z]")))
        if len(maybe):
            cells = [pc.take(column, maybe).to_pylist() for column in columns]
            maybe_rows = pc.take(numbers, maybe).to_pylist()
            blank = [
                row
                for row, record in zip(maybe_rows, zip(*cells, strict=True), strict=True)
                if _is_blank(record)
            ]
            if blank:
                keep = pc.invert(pc.is_in(numbers, value_set=arrays.integers(blank)))
                numbers = pc.filter(numbers, keep)
                if not len(numbers):
                    return None
                columns = [pc.filter(column, keep) for column in columns]
                ids = columns[self._indexes[ID_FIELD]]

        def column(field: str) -> pyarrow.Array | None:
            index = self._indexes.get(field)
            return None if index is None else columns[index]

        return RowBatch(
            numbers,
            ids,
            tuple(column(field) for field in FIELDS),
            tuple(column(field) for field in EXPECT_FIELDS),
        )

    def _python_csv_batches(self, chunk_rows: int, delimiter: str, done: int) -> Iterator[RowBatch]:
        """The rows after the first `done`, read by the csv module."""
        with _csv_reader(self.path, self.name, delimiter) as reader:
            for _ in islice(reader, done + self._before_rows):  # the header (checked) and those
                pass
            while True:
                records: list[list[str]] = []
                try:
                    # The csv module's loop in C; list.extend keeps what it read before an error.
                    records.extend(islice(reader, chunk_rows))
                except (InputError, csv.Error, UnicodeDecodeError):
                    # A row further up with too many cells is the first problem in the file.
                    self._check_widths(records, done, delimiter)
                    raise
                if not records:
                    return
                batch = self._csv_batch(records, done, delimiter)
                done += len(records)
                if batch is not None:
                    yield batch

    def _check_widths(self, records: list[list[str]], done: int, delimiter: str) -> bool:
        """Pad short records with empty cells in place; raise InputError at the first record
        with more cells than the header. True if any record was padded."""
        width = self._width
        padded = False
        for index, record in enumerate(records):
            if len(record) == width:
                continue
            if len(record) > width:
                row = done + index + 1
                raise InputError(
                    f"{self.name}, line {self._line_of_row(row, delimiter)} (row {row}): "
                    f"{len(record)} cells but the header has {width}; quote cells that "
                    f"contain {_show_delimiter(delimiter)}"
                )
            # Some tools drop trailing empty cells; empty means "leave unchanged".
            record += [""] * (width - len(record))
            padded = True
        return padded

    def _line_of_row(self, row: int, delimiter: str) -> int:
        """The physical line a data row ends on (read again: only an error needs it)."""
        with _csv_reader(self.path, self.name, delimiter) as reader:
            for _ in islice(reader, row + self._before_rows):  # the header, then `row` records
                pass
            return int(reader.line_num)

    def _csv_batch(self, records: list[list[str]], done: int, delimiter: str) -> RowBatch | None:

        width = self._width
        widths = set(map(len, records))
        if len(widths) > 1 or width not in widths:
            self._check_widths(records, done, delimiter)
        id_index = self._indexes[ID_FIELD]
        ids = [record[id_index] for record in records]
        # Blank lines and rows of empty cells (spreadsheets export trailing ",,,") ask for
        # nothing; they keep their row number so later rows match the sheet. The rows whose id
        # cell is blank (`not cell.strip()`) are found by loops in C: most files have few.
        empty = compress(count(), map(operator.not_, ids))
        spaces = compress(count(), map(str.isspace, ids))
        candidates = [*empty, *spaces]
        if candidates:
            skip = {index for index in candidates if _is_blank(records[index])}
            if skip:
                kept = [index for index in range(len(records)) if index not in skip]
                if not kept:
                    return None
                records = [records[index] for index in kept]
                ids = [ids[index] for index in kept]
                numbers = arrays.integers([done + index + 1 for index in kept])
            else:
                numbers = _row_numbers(done + 1, len(records))
        else:
            numbers = _row_numbers(done + 1, len(records))

        def column(field: str) -> pyarrow.Array | None:
            index = self._indexes.get(field)
            if index is None:
                return None
            return arrays.strings([record[index] for record in records])

        return RowBatch(
            numbers,
            arrays.strings(ids),
            tuple(column(field) for field in FIELDS),
            tuple(column(field) for field in EXPECT_FIELDS),
        )

    def _parquet_batches(self, chunk_rows: int) -> Iterator[RowBatch]:
        parquet_file, _, _ = _open_parquet(self.path, self.name)
        wanted = list(dict.fromkeys(self.columns.values()))
        row_number = 0
        # One thread: decoding is a small part of the time, and each thread keeps memory.
        batches = parquet_file.iter_batches(
            batch_size=chunk_rows, columns=wanted, use_threads=False
        )
        while True:
            try:
                batch = next(batches, None)
                if batch is None:
                    return
                values = {name: _string_array(batch.column(name)) for name in wanted}
            except _parquet_errors() as error:
                raise InputError(
                    f"{self.name}: cannot read the rows after row {row_number}: "
                    f"{_first_line(error)}; the file may be damaged, export it again"
                ) from None
            if not batch.num_rows:
                continue
            by_field = {field: values[name] for field, name in self.columns.items()}
            numbers = _row_numbers(row_number + 1, batch.num_rows)
            row_number += batch.num_rows
            yield RowBatch(
                numbers,
                by_field[ID_FIELD],
                tuple(by_field.get(field) for field in FIELDS),
                tuple(by_field.get(field) for field in EXPECT_FIELDS),
            )


def _only(
    chunks: Iterator[tuple[pyarrow.Array, list[pyarrow.Array]]], only: Set[int] | None
) -> Iterator[tuple[pyarrow.Array, list[pyarrow.Array]]]:
    """The chunks' rows whose numbers are in `only` (all of them when it is None): a few rows
    of a big file are all that is kept, not every chunk up to the last of them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if only is None:
        yield from chunks
        return
    wanted = arrays.integers(sorted(only))
    pa.default_memory_pool().release_unused()
    for numbers, columns in chunks:
        keep = pc.is_in(numbers, value_set=wanted)
        yield pc.filter(numbers, keep), [pc.filter(column, keep) for column in columns]
        # What the chunk held goes back to the system now, not at the end of the read: it
        # comes on top of a finished run's memory (see prepare._release_memory).
        pa.default_memory_pool().release_unused()


class _Bounded(io.RawIOBase):
    """The first `size` bytes of a file, for pyarrow to read through a Python file object."""

    def __init__(self, path: Path, size: int) -> None:
        self._file = path.open("rb")
        self._left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)[: self._left]
        count = self._file.readinto(view)
        self._left -= count
        return count

    def close(self) -> None:
        self._file.close()
        super().close()


class _NotPlain(Exception):
    """The file is not one pyarrow reads as the csv module does: the csv module reads it."""


def _plain_csv(path: Path) -> int | None:
    """How many of the file's bytes pyarrow's CSV reader, quoting off, reads into the very cells
    the csv module reads; None when that is not known to hold.

    It holds for a file with no `"`, no NUL byte, no line longer than the csv module's cell
    limit (or than _MAX_LINE_CHARS) and lines ended by \\n or \\r\\n: each line is then its
    text split at the delimiter. The empty lines at the end (blank rows, numbered after every
    other) are left out; an empty line before them is left to pyarrow, which refuses it in a
    file of several columns (the csv module then reads on). Looked for in the bytes, with C
    loops, a block at a time."""
    limit = min(csv.field_size_limit(), _MAX_LINE_CHARS)
    step = limit // 2
    tail = b""  # the unfinished line at the end of the blocks read so far
    size = 0  # bytes read so far
    text_end = 0  # just after the last byte that is not a line end
    try:
        with path.open("rb") as file:
            while block := file.read(_HASH_BLOCK):
                if b'"' in block or b"\x00" in block:
                    return None
                data = tail + block
                cut = data.rfind(b"\n") + 1
                whole, tail = data[:cut], data[cut:]
                if len(tail) > limit:
                    return None
                # A line longer than `limit` holds a stretch of `step` bytes without a \n.
                if any(whole.find(b"\n", at, at + step) < 0 for at in range(0, cut, step)):
                    if max(map(len, whole.split(b"\n"))) > limit:
                        return None
                returns = whole.count(b"\r")
                if returns and returns != whole.count(b"\r\n"):
                    return None  # a line ended by \r alone
                size += len(block)
                kept = len(block.rstrip(b"\r\n"))
                if kept:
                    text_end = size - len(block) + kept
    except OSError:
        return None
    if b"\r" in tail.rstrip(b"\r") or tail.endswith(b"\r\r"):
        return None
    return text_end


def _row_numbers(first: int, count: int) -> pyarrow.Array:
    """first, first + 1, ... (count numbers) as an int64 array, without a Python int each."""
    return arrays.integers(range(first, first + count))


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
    forced_delimiter = _check_delimiter(delimiter) if delimiter is not None else None
    from pipeline.stages.spreadsheet import SPREADSHEET_SUFFIXES, open_spreadsheet

    suffix = Path(path).suffix.lower()
    if sheet is not None and suffix not in SPREADSHEET_SUFFIXES:
        shown = "stdin" if str(path) == "-" else str(path)
        raise InputError(
            f"--sheet: {shown} is not a spreadsheet (.xlsx, .xlsm, .xls or .ods); leave it out"
        )
    if str(path) == "-":
        spooled = _spool_stdin(stdin)
        try:
            return _open_csv(spooled, "stdin", column_map, forced_delimiter, temporary=True)
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
        return _open_parquet_input(path, name, column_map)
    if suffix in CSV_SUFFIXES:
        return _open_csv(path, name, column_map, forced_delimiter)
    raise InputError(
        f"{name}: unsupported file type {suffix or '(no suffix)'!r}; mateo-bulk reads .csv, "
        ".parquet, .xlsx, .xlsm, .xls and .ods files"
    )


# --- CSV ---------------------------------------------------------------------------------------


def _open_csv(
    path: Path,
    name: str,
    column_map: Mapping[str, str],
    delimiter: str | None,
    *,
    temporary: bool = False,
) -> InputFile:
    with _open_binary(path, name) as file:
        head = file.read(_SNIFF_BYTES)
        size = os.fstat(file.fileno()).st_size
    if not head:
        raise InputError(f"{name} is empty; it needs a header line and at least one row")
    _refuse_binary(head, name)
    header_line = re.split(rb"[\r\n]", head, maxsplit=1)[0]
    if len(header_line) == len(head) and size > len(head):
        raise InputError(
            f"{name}: the first line is longer than {_SNIFF_BYTES // 1024} KiB; "
            "the first line must be a header such as conversation_id,status"
        )
    try:
        header_text = header_line.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _utf8_error(path, name) from None
    # Excel writes `sep=;` before the header of a CSV meant for another locale: the delimiter.
    excel_sep = re.fullmatch(r"sep=(.)", header_text.strip())
    lines_before_header = 0
    if excel_sep:
        lines_before_header = 1
        if delimiter is None:
            delimiter = _check_delimiter(excel_sep.group(1))
    if delimiter is None:
        delimiter = _detect_delimiter(header_text)
    with _csv_reader(path, name, delimiter) as reader:
        for _ in islice(reader, lines_before_header):
            pass
        header: list[str] = next(reader, [])
        if not header:
            raise InputError(
                f"{name}: the first line is empty; it must be a header such as "
                "conversation_id,status"
            )
        indexes = _resolve_columns(header, column_map, name)
        if all(_is_blank(record) for record in reader):
            raise InputError(f"{name} has a header but no rows")
    return InputFile(
        path,
        name=name,
        format="csv",
        header=header,
        indexes=indexes,
        delimiter=delimiter,
        temporary=temporary,
        lines_before_header=lines_before_header,
    )


@contextmanager
def _csv_reader(path: Path, name: str, delimiter: str) -> Iterator[Any]:
    """A csv reader over the file (header first), turning decoding and CSV errors into
    InputErrors that name the line."""
    with _open_binary(path, name) as raw:
        lines = chain.from_iterable(_line_blocks(raw, name))
        reader = csv.reader(lines, delimiter=delimiter, strict=True)
        try:
            yield reader
        except UnicodeDecodeError:
            raise _utf8_error(path, name) from None
        except csv.Error as error:
            raise InputError(
                f"{name}, line {reader.line_num}: {_explain_csv_error(error)}"
            ) from None


def _line_blocks(raw: BinaryIO, name: str) -> Iterator[list[str]]:
    """The file's physical lines, a block's worth per list, exactly as
    `io.TextIOWrapper(raw, encoding="utf-8-sig", newline="").readline()` returns them (line ends
    kept: \\n, \\r\\n or \\r). A line with a NUL byte or longer than _MAX_LINE_CHARS, and
    bytes that are not UTF-8, raise once every line before them has been handed out, so the
    first problem in the file is the one reported."""
    decode = codecs.utf_8_decode
    pending = b""
    carry = ""  # the start of a line whose end is in a later block
    lines_before = 0
    first = True
    while True:
        block = raw.read(_TEXT_BLOCK)
        data = pending + block if pending else block
        if first:
            first = False
            if data.startswith(_BOM):
                data = data[len(_BOM) :]
        final = not block
        bad_bytes: UnicodeDecodeError | None = None
        try:
            text, consumed = decode(data, "strict", final)
        except UnicodeDecodeError as error:
            text, consumed = decode(data[: error.start], "strict", True)
            bad_bytes = error
        pending = data[consumed:]
        if carry:
            text = carry + text
        if any(each in text for each in _OTHER_LINE_BREAKS):
            lines = _LINE.findall(text)
        else:
            lines = text.splitlines(True)
        carry = ""
        if lines and lines[-1][-1] != "\n" and (not final or bad_bytes is not None):
            # Unfinished, or ending in \r that a \n in the next block may complete.
            carry = lines.pop()
            if bad_bytes is not None:
                # The bytes that are not UTF-8 are on this line; a line ended by \r is whole.
                if carry[-1] == "\r":
                    lines.append(carry)
                carry = ""
        problem = _first_bad_line(lines, "\x00" in text)
        if problem is not None:
            index, message = problem
            if index:
                yield lines[:index]
            raise InputError(f"{name}, line {lines_before + index + 1}: {message}")
        if lines:
            yield lines
        lines_before += len(lines)
        if bad_bytes is not None:
            raise bad_bytes
        if len(carry) >= _MAX_LINE_CHARS:
            raise InputError(f"{name}, line {lines_before + 1}: {_too_long()}")
        if final:
            return


def _too_long() -> str:
    return f"longer than {_MAX_LINE_CHARS:,} characters; this does not look like a CSV file"


_NUL = "contains a NUL byte; this looks like a binary file, not CSV"


def _first_bad_line(lines: list[str], nul: bool) -> tuple[int, str] | None:
    """The index of the first line with a NUL byte or too long to be CSV, and what is wrong;
    `nul` says whether the text may hold a NUL at all."""
    if not nul and not (lines and max(map(len, lines)) >= _MAX_LINE_CHARS):
        return None
    for index, line in enumerate(lines):
        if len(line.rstrip("\r\n")) >= _MAX_LINE_CHARS:
            return index, _too_long()
        if "\x00" in line:
            return index, _NUL
    return None


def _explain_csv_error(error: csv.Error) -> str:
    message = str(error)
    if "unexpected end of data" in message:
        return 'a quoted cell is never closed: check the " characters on this line and above'
    if "field larger than field limit" in message:
        return f"a cell is longer than {csv.field_size_limit():,} characters"
    if "expected after" in message:
        return f'malformed quoting ({message}): a " inside a quoted cell must be doubled ("")'
    return f"malformed CSV: {message}"


def _detect_delimiter(header: str) -> str:
    """The candidate delimiter appearing most often in the header line; ',' for one column."""
    counts = [header.count(candidate) for candidate in DELIMITERS]
    best = max(counts)
    return DELIMITERS[counts.index(best)] if best else ","


def _check_delimiter(delimiter: str) -> str:
    resolved = _DELIMITER_NAMES.get(delimiter.lower(), delimiter)
    if len(resolved) != 1 or resolved in '"\r\n' or resolved.isalnum():
        raise InputError(f"--delimiter {delimiter!r}: must be one character such as , ; | or tab")
    return resolved


def _show_delimiter(delimiter: str) -> str:
    return "tab" if delimiter == "\t" else repr(delimiter)


def _is_blank(record: Sequence[str]) -> bool:
    return not any(cell.strip() for cell in record)


def _refuse_binary(head: bytes, name: str) -> None:
    # An OpenDocument file starts with its uncompressed mimetype, which names what it is.
    if head.startswith(b"PK\x03\x04") and b"opendocument.spreadsheet" in head[:128]:
        raise InputError(
            f"{name} is an OpenDocument spreadsheet, not a CSV file; "
            + _WORKBOOK_ADVICE.format(".ods")
        )
    for magic, what, advice in _MAGIC:
        if head.startswith(magic):
            raise InputError(f"{name} is {what}, not a CSV file; {advice}")
    if b"\x00" in head:
        raise InputError(
            f"{name} contains NUL bytes: it is a binary file, not CSV; "
            "pass a CSV UTF-8 or Parquet file"
        )


def _utf8_error(path: Path, name: str) -> InputError:
    """Locate the first byte that is not UTF-8 and say how to fix it."""
    found = _find_invalid_utf8(path)
    where = ""
    if found is not None:
        line, offset, byte = found
        where = f": byte 0x{byte:02x} at line {line} (byte offset {offset})"
    return InputError(
        f"{name} is not valid UTF-8{where}; re-save it as UTF-8 "
        '(in Excel: Save As > "CSV UTF-8"); other encodings are not guessed'
    )


def _find_invalid_utf8(path: Path) -> tuple[int, int, int] | None:
    """(line, byte offset, byte) of the first invalid UTF-8 sequence, read in blocks."""
    line = 1
    offset = 0
    pending = b""
    with path.open("rb") as file:
        while True:
            block = file.read(_HASH_BLOCK)
            data = pending + block
            try:
                _, consumed = codecs.utf_8_decode(data, "strict", not block)
            except UnicodeDecodeError as error:
                return (
                    line + data.count(b"\n", 0, error.start),
                    offset + error.start,
                    data[error.start],
                )
            line += data.count(b"\n", 0, consumed)
            offset += consumed
            pending = data[consumed:]
            if not block:
                return None


def _spool_stdin(stdin: BinaryIO | None) -> Path:
    if stdin is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise InputError("no input on stdin: pipe a CSV file in, e.g. `... run - < rows.csv`")
        stdin = sys.stdin.buffer
    handle, name = tempfile.mkstemp(prefix="mateo-bulk-stdin-", suffix=".csv")
    spooled = Path(name)
    try:
        with os.fdopen(handle, "wb") as file:
            shutil.copyfileobj(stdin, file, _HASH_BLOCK)
    except BaseException:
        spooled.unlink(missing_ok=True)
        raise
    return spooled


# --- Parquet -----------------------------------------------------------------------------------


def _open_parquet_input(path: Path, name: str, column_map: Mapping[str, str]) -> InputFile:
    import pyarrow as pa

    with _open_binary(path, name) as file:
        size = os.fstat(file.fileno()).st_size
        head = file.read(4)
        if size >= 8:
            file.seek(-4, os.SEEK_END)
        tail = file.read(4)
    if size == 0:
        raise InputError(f"{name} is empty; export the data again")
    if head != b"PAR1":
        raise InputError(f"{name} is not a Parquet file (no PAR1 marker at the start)")
    if size < 12 or tail != b"PAR1":
        raise InputError(
            f"{name} is an incomplete Parquet file (the end marker is missing: a truncated "
            "download or copy?); export or copy it again"
        )
    _, schema, row_count = _open_parquet(path, name)
    indexes = _resolve_columns(schema.names, column_map, name)
    for field, index in indexes.items():
        column_type = schema.field(index).type
        if pa.types.is_nested(column_type):
            column = schema.names[index]
            read_as = "" if _normalise_name(column) == field else f" (read as {field})"
            raise InputError(
                f"{name}: column {column!r}{read_as} holds nested values "
                f"({column_type}); it must hold one plain value per row"
            )
    if row_count == 0:
        raise InputError(f"{name} has columns but no rows")
    return InputFile(
        path,
        name=name,
        format="parquet",
        header=schema.names,
        indexes=indexes,
        delimiter=None,
        not_cells=[index for index, column in enumerate(schema) if pa.types.is_nested(column.type)],
    )


def _open_parquet(path: Path, name: str) -> tuple[Any, Any, int]:
    """The pyarrow ParquetFile, its Arrow schema and its row count."""
    import pyarrow.parquet as pq

    try:
        # Without pre-buffering a row group is read column by column, and with a buffer size a
        # column a page at a time, not whole: a file of one 1M-row row group (pandas' default)
        # then peaks ~100 MiB lower, at no cost on a local disk.
        parquet_file = pq.ParquetFile(path, pre_buffer=False, buffer_size=64 * 1024)
        return parquet_file, parquet_file.schema_arrow, parquet_file.metadata.num_rows
    except _parquet_errors() as error:
        raise InputError(
            f"{name} is not a readable Parquet file ({_first_line(error)}); export it again"
        ) from None


def _parquet_errors() -> tuple[type[Exception], ...]:
    import pyarrow as pa

    # A damaged file also surfaces as UnicodeDecodeError (a ValueError) from pyarrow's own
    # decoding of column names and metadata, not only as ArrowException.
    return (pa.ArrowException, OSError, ValueError)


def _string_array(array: pyarrow.Array | pyarrow.ChunkedArray) -> pyarrow.Array:
    """The column as text: non-string values through str(), nulls as empty cells."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        try:
            array = pc.cast(array, pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            values = ["" if value is None else str(value) for value in array.to_pylist()]
            return arrays.strings(values)
    if pa.types.is_large_string(array.type):
        array = pc.cast(array, pa.string())
    # A damaged file can hold bytes that are not UTF-8: found here, as a read error of the file
    # (ArrowInvalid), not later when a cell is turned into text.
    array.validate(full=True)
    result: pyarrow.Array = pc.fill_null(array, arrays.string(""))
    return result


# --- shared --------------------------------------------------------------------------------------


def _open_binary(path: Path, name: str) -> BinaryIO:
    try:
        return path.open("rb")
    except PermissionError:
        raise InputError(f"{name}: permission denied; check the file's permissions") from None
    except OSError as error:
        raise InputError(f"{name}: cannot read it ({error.strerror or error})") from None


def _normalise_name(column: str) -> str:
    return column.strip().lstrip("\ufeff").strip().casefold()


def _resolve_columns(
    header: Sequence[str], column_map: Mapping[str, str], name: str
) -> dict[str, int]:
    """field -> index of the column it is read from; InputError when that is not clear-cut."""
    positions: dict[str, list[int]] = {}
    for index, column in enumerate(header):
        positions.setdefault(_normalise_name(column), []).append(index)

    indexes: dict[str, int] = {}
    for field in MAPPABLE_FIELDS:
        if field in column_map:
            wanted = _normalise_name(column_map[field])
            if wanted not in positions:
                raise InputError(
                    f"--map {field}={column_map[field]}: {name} has no column "
                    f"{column_map[field]!r}; its columns are {_list_columns(header)}"
                )
        elif field == ID_FIELD:
            wanted = next((each for each in (ID_FIELD, "id") if each in positions), "")
            if not wanted:
                raise InputError(
                    f"{name} has no conversation_id (or id) column; its columns are "
                    f"{_list_columns(header)}. The first line must be a header; "
                    "use --map conversation_id=COLUMN for another name"
                )
        elif field in positions:
            wanted = field
        else:
            continue
        found = positions[wanted]
        if len(found) > 1:
            raise InputError(
                f"{name} has {len(found)} columns named {header[found[0]].strip()!r} (columns "
                f"{', '.join(str(each + 1) for each in found)}); rename or remove all but one"
            )
        indexes[field] = found[0]

    readers: dict[int, str] = {}
    for field, index in indexes.items():
        if index in readers:
            raise InputError(
                f"{name}: {readers[index]} and {field} would both be read from column "
                f"{header[index]!r}; check the --map options"
            )
        readers[index] = field
    return indexes


#: Names users give target columns that are not the names mateo-bulk reads.
_TARGET_SYNONYMS = {
    "inbox": "inbox_id",
    "agent": "assignee_id",
    "agent_id": "assignee_id",
    "assignee": "assignee_id",
    "assigned_to": "assignee_id",
    "owner": "assignee_id",
    "owner_id": "assignee_id",
    "state": "status",
}


def _look_alike_columns(header: Sequence[str], indexes: Mapping[str, int]) -> list[str]:
    """A warning for each column the run does not read whose name looks like a field it would
    read (`inbox` for `inbox_id`, `stauts`): its values would be ignored without a word."""
    import difflib

    read = set(indexes.values())
    unread_fields = [field for field in MAPPABLE_FIELDS if field not in indexes]
    warnings = []
    for position, column in enumerate(header):
        if position in read:
            continue
        name = _normalise_name(column).replace(" ", "_").replace("-", "_")
        meant = _TARGET_SYNONYMS.get(name) or next(
            iter(difflib.get_close_matches(name, unread_fields, n=1, cutoff=0.75)), None
        )
        if meant is None or meant in indexes:
            continue
        warnings.append(
            f"column {column!r} is not read: its values are ignored. If it holds {meant} "
            f"values, rename it {meant} or pass --map {meant}={column}"
        )
    return warnings


def _list_columns(header: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(repr(column[:40]) for column in header[:limit])
    return shown + (f" and {len(header) - limit} more" if len(header) > limit else "")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
