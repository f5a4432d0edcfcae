"""The fast path for plain CSV files: when a file holds no quotes and nothing else the csv module
would read differently, pyarrow's CSV reader reads its cells, several times faster. Whether a
file is plain is decided here, from its bytes; a row pyarrow cannot read as the csv module would
hands the rest of the file back to the csv module (`NotPlain`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core import arrays
from pipeline.core.models import FIELDS
from pipeline.stages.input.columns import EXPECT_FIELDS, ID_FIELD
from pipeline.stages.input.csv_text import MAX_LINE_CHARS, is_blank
from pipeline.stages.input.input_file import READ_BLOCK, RowBatch, row_numbers

if TYPE_CHECKING:
    import pyarrow


class NotPlain(Exception):
    """The file is not one pyarrow reads as the csv module does: the csv module reads it."""


def plain_csv(path: Path) -> int | None:
    """How many of the file's bytes pyarrow's CSV reader, quoting off, reads into the very cells
    the csv module reads; None when that is not known to hold.

    It holds for a file with no `"`, no NUL byte, no line longer than the csv module's cell
    limit (or than MAX_LINE_CHARS) and lines ended by \\n or \\r\\n: each line is then its
    text split at the delimiter. The empty lines at the end (blank rows, numbered after every
    other) are left out; an empty line before them is left to pyarrow, which refuses it in a
    file of several columns (the csv module then reads on). Looked for in the bytes, with C
    loops, a block at a time."""
    limit = min(csv.field_size_limit(), MAX_LINE_CHARS)
    step = limit // 2
    tail = b""  # the unfinished line at the end of the blocks read so far
    size = 0  # bytes read so far
    text_end = 0  # just after the last byte that is not a line end
    try:
        with path.open("rb") as file:
            while block := file.read(READ_BLOCK):
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


def arrow_csv_batches(
    path: Path,
    end: int,
    chunk_rows: int,
    delimiter: str,
    *,
    width: int,
    skip_rows: int,
    indexes: Mapping[str, int],
) -> Iterator[tuple[RowBatch, int]]:
    """The rows of a plain file (`plain_csv`: its first `end` bytes) read by pyarrow's CSV
    reader with quoting off: the same cells as the csv module's, several times faster. A
    row it cannot read as the csv module would (an empty line, a row of another width,
    bytes that are not UTF-8) raises NotPlain, after the rows before it; each batch comes
    with the number of rows handed out so far. The file has `width` columns and `skip_rows`
    records before its first row; `indexes` maps each field read to its column's position."""
    with _Bounded(path, end) as source:
        yield from _arrow_csv_rows(source, chunk_rows, delimiter, width, skip_rows, indexes)


def _arrow_csv_rows(
    source: _Bounded,
    chunk_rows: int,
    delimiter: str,
    width: int,
    skip_rows: int,
    indexes: Mapping[str, int],
) -> Iterator[tuple[RowBatch, int]]:
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    names = [str(index) for index in range(width)]
    try:
        reader = pa_csv.open_csv(
            pa.PythonFile(source, mode="r"),
            read_options=pa_csv.ReadOptions(
                # Its parser keeps ~20x the block in memory: small blocks, rows regrouped.
                column_names=names,
                skip_rows=skip_rows,
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
        raise NotPlain from None
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
            raise NotPlain from None
        while pending_rows >= chunk_rows or (ended and pending_rows):
            table = pa.Table.from_batches(pending)
            chunk = table.slice(0, chunk_rows)
            rest = table.slice(chunk_rows)
            pending, pending_rows = rest.to_batches(), rest.num_rows
            columns = [column.combine_chunks() for column in chunk.columns]
            row_batch = _columns_batch(columns, done, indexes)
            done += chunk.num_rows
            if row_batch is not None:
                yield row_batch, done


def _columns_batch(
    columns: list[pyarrow.Array], done: int, indexes: Mapping[str, int]
) -> RowBatch | None:
    """A RowBatch of records given as one string array per column of the file."""
    import pyarrow.compute as pc

    ids = columns[indexes[ID_FIELD]]
    numbers = row_numbers(done + 1, len(ids))
    # Blank rows, as the csv module path skips them: only an id cell without a letter or a
    # digit can be blank, and those few are looked at in Python.
    maybe = pc.indices_nonzero(pc.invert(pc.match_substring_regex(ids, "[0-9A-Za-z]")))
    if len(maybe):
        cells = [pc.take(column, maybe).to_pylist() for column in columns]
        maybe_rows = pc.take(numbers, maybe).to_pylist()
        blank = [
            row
            for row, record in zip(maybe_rows, zip(*cells, strict=True), strict=True)
            if is_blank(record)
        ]
        if blank:
            keep = pc.invert(pc.is_in(numbers, value_set=arrays.integers(blank)))
            numbers = pc.filter(numbers, keep)
            if not len(numbers):
                return None
            columns = [pc.filter(column, keep) for column in columns]
            ids = columns[indexes[ID_FIELD]]

    def column(field: str) -> pyarrow.Array | None:
        index = indexes.get(field)
        return None if index is None else columns[index]

    return RowBatch(
        numbers,
        ids,
        tuple(column(field) for field in FIELDS),
        tuple(column(field) for field in EXPECT_FIELDS),
    )
