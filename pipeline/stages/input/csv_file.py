"""A CSV file as input: `open_csv` checks the file as a whole (not binary, UTF-8, a header with
an id column, rows), and `CsvInput` streams its rows, through pyarrow for a plain file
(`csv_fast`) and through the csv module otherwise. Rows are numbered as records after the
header, blank ones counted but not handed on; a row with more cells than the header stops the
read, naming its line.
"""

from __future__ import annotations

import csv
import operator
import os
import re
from collections.abc import Iterator, Mapping, Sequence, Set
from itertools import compress, count, islice
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.core import arrays
from pipeline.core.errors import InputError
from pipeline.core.models import FIELDS
from pipeline.stages.input.columns import EXPECT_FIELDS, ID_FIELD, MAPPABLE_FIELDS, resolve_columns
from pipeline.stages.input.csv_fast import NotPlain, arrow_csv_batches, plain_csv
from pipeline.stages.input.csv_text import (
    check_delimiter,
    csv_reader,
    detect_delimiter,
    is_blank,
    refuse_binary,
    show_delimiter,
    utf8_error,
)
from pipeline.stages.input.input_file import (
    DEFAULT_CHUNK_ROWS,
    InputFile,
    RowBatch,
    only_rows,
    open_binary,
    row_numbers,
)

if TYPE_CHECKING:
    import pyarrow

_SNIFF_BYTES = 64 * 1024


class CsvInput(InputFile):
    """A CSV file (or stdin, spooled) whose file-level checks passed."""

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
        field_at = {index: field for field, index in self._indexes.items()}
        if all(at in field_at for at in positions):
            # Only columns the run reads: the first pass's reader (pyarrow's, for a plain file)
            # hands them over as written, several times faster than the csv module.
            yield from self._field_cells([field_at[at] for at in positions], chunk_rows, only)
            return
        done = 0
        with csv_reader(self.path, self.name, self.delimiter or ",") as reader:
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

        yield from only_rows(read(), only)

    def _batches(self, chunk_rows: int) -> Iterator[RowBatch]:
        delimiter = self.delimiter or ","
        done = 0  # records read so far, blank ones included: the next row's number - 1
        end = plain_csv(self.path)
        if end is not None:
            try:
                for batch, handed_out in arrow_csv_batches(
                    self.path,
                    end,
                    chunk_rows,
                    delimiter,
                    width=self._width,
                    skip_rows=self._before_rows,
                    indexes=self._indexes,
                ):
                    done = handed_out
                    yield batch
                return
            except NotPlain:
                pass  # the csv module goes on from the row after the last one handed out
        yield from self._python_csv_batches(chunk_rows, delimiter, done)

    def _python_csv_batches(self, chunk_rows: int, delimiter: str, done: int) -> Iterator[RowBatch]:
        """The rows after the first `done`, read by the csv module."""
        with csv_reader(self.path, self.name, delimiter) as reader:
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
                    f"contain {show_delimiter(delimiter)}"
                )
            # Some tools drop trailing empty cells; empty means "leave unchanged".
            record += [""] * (width - len(record))
            padded = True
        return padded

    def _line_of_row(self, row: int, delimiter: str) -> int:
        """The physical line a data row ends on (read again: only an error needs it)."""
        with csv_reader(self.path, self.name, delimiter) as reader:
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
            skip = {index for index in candidates if is_blank(records[index])}
            if skip:
                kept = [index for index in range(len(records)) if index not in skip]
                if not kept:
                    return None
                records = [records[index] for index in kept]
                ids = [ids[index] for index in kept]
                numbers = arrays.integers([done + index + 1 for index in kept])
            else:
                numbers = row_numbers(done + 1, len(records))
        else:
            numbers = row_numbers(done + 1, len(records))

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


def open_csv(
    path: Path,
    name: str,
    column_map: Mapping[str, str],
    delimiter: str | None,
    *,
    temporary: bool = False,
) -> CsvInput:
    with open_binary(path, name) as file:
        head = file.read(_SNIFF_BYTES)
        size = os.fstat(file.fileno()).st_size
    if not head:
        raise InputError(f"{name} is empty; it needs a header line and at least one row")
    refuse_binary(head, name)
    header_line = re.split(rb"[\r\n]", head, maxsplit=1)[0]
    if len(header_line) == len(head) and size > len(head):
        raise InputError(
            f"{name}: the first line is longer than {_SNIFF_BYTES // 1024} KiB; "
            "the first line must be a header such as conversation_id,status"
        )
    try:
        header_text = header_line.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise utf8_error(path, name) from None
    # Excel writes `sep=;` before the header of a CSV meant for another locale: the delimiter.
    excel_sep = re.fullmatch(r"sep=(.)", header_text.strip())
    lines_before_header = 0
    if excel_sep:
        lines_before_header = 1
        if delimiter is None:
            delimiter = check_delimiter(excel_sep.group(1))
    if delimiter is None:
        delimiter = detect_delimiter(header_text)
    with csv_reader(path, name, delimiter) as reader:
        for _ in islice(reader, lines_before_header):
            pass
        header: list[str] = next(reader, [])
        if not header:
            raise InputError(
                f"{name}: the first line is empty; it must be a header such as "
                "conversation_id,status"
            )
        indexes = resolve_columns(header, column_map, name)
        if all(is_blank(record) for record in reader):
            raise InputError(f"{name} has a header but no rows")
    return CsvInput(
        path,
        name=name,
        format="csv",
        header=header,
        indexes=indexes,
        delimiter=delimiter,
        temporary=temporary,
        lines_before_header=lines_before_header,
    )
