"""What every input reader hands on: rows as records (`InputRow`) and as columns (`RowBatch`),
and `InputFile`, the interface of an input whose file-level checks passed. CSV, Parquet and
spreadsheets each subclass it with how their rows are read; what they share (opening a file,
row numbers, keeping a few rows of a chunk) is here.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass
from itertools import repeat
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

from pipeline.core import arrays
from pipeline.core.errors import InputError
from pipeline.stages.input.columns import look_alike_columns

if TYPE_CHECKING:
    import pyarrow

#: Rows per chunk: each chunk's rows are in memory as Python and Arrow objects at once (about
#: 20 MB for 20,000 rows); larger chunks cost memory and gain almost no time.
DEFAULT_CHUNK_ROWS = 20_000
#: Bytes read at a time when a whole file is gone through (hashed, checked, copied).
READ_BLOCK = 1024 * 1024


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
        self.warnings = look_alike_columns(self.header, self._indexes)
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
        with open_binary(self.path, self.name) as file:
            while block := file.read(READ_BLOCK):
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
        return self._batches(chunk_rows)

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
        `only`, when given (a few failed rows of a big file: the others are skipped unread)."""
        raise NotImplementedError

    def _batches(self, chunk_rows: int) -> Iterator[RowBatch]:
        """The rows of `batches()`, `chunk_rows` (at least 1) at a time: each format's own."""
        raise NotImplementedError


def only_rows(
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


def row_numbers(first: int, count: int) -> pyarrow.Array:
    """first, first + 1, ... (count numbers) as an int64 array, without a Python int each."""
    return arrays.integers(range(first, first + count))


def open_binary(path: Path, name: str) -> BinaryIO:
    try:
        return path.open("rb")
    except PermissionError:
        raise InputError(f"{name}: permission denied; check the file's permissions") from None
    except OSError as error:
        raise InputError(f"{name}: cannot read it ({error.strerror or error})") from None


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
