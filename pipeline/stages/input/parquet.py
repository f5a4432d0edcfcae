"""A Parquet file as input: `open_parquet_input` checks the file as a whole (its PAR1 markers,
a readable footer, an id column of plain values, rows), and `ParquetInput` streams its rows a
row group's batches at a time. Every value is read as text: non-string values through str(),
nulls as empty cells.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence, Set
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core import arrays
from pipeline.core.errors import InputError
from pipeline.core.models import FIELDS
from pipeline.stages.input.columns import EXPECT_FIELDS, ID_FIELD, normalise_name, resolve_columns
from pipeline.stages.input.input_file import (
    DEFAULT_CHUNK_ROWS,
    InputFile,
    RowBatch,
    first_line,
    only_rows,
    open_binary,
    row_numbers,
)

if TYPE_CHECKING:
    import pyarrow


class ParquetInput(InputFile):
    """A Parquet file whose file-level checks passed."""

    def cells(
        self,
        positions: Sequence[int],
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        only: Set[int] | None = None,
    ) -> Iterator[tuple[pyarrow.Array, list[pyarrow.Array]]]:
        names = [self.header[at] for at in positions]
        if only is None:
            yield from self._parquet_cells(names, chunk_rows)
        else:
            yield self._parquet_rows(names, chunk_rows, only)

    def _batches(self, chunk_rows: int) -> Iterator[RowBatch]:
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
                    f"{first_line(error)}; the file may be damaged, export it again"
                ) from None
            if not batch.num_rows:
                continue
            by_field = {field: values[name] for field, name in self.columns.items()}
            numbers = row_numbers(row_number + 1, batch.num_rows)
            row_number += batch.num_rows
            yield RowBatch(
                numbers,
                by_field[ID_FIELD],
                tuple(by_field.get(field) for field in FIELDS),
                tuple(by_field.get(field) for field in EXPECT_FIELDS),
            )

    def _parquet_cells(
        self, names: Sequence[str], chunk_rows: int
    ) -> Iterator[tuple[pyarrow.Array, list[pyarrow.Array]]]:
        parquet_file, _, _ = _open_parquet(self.path, self.name)
        done = 0
        for batch in parquet_file.iter_batches(
            batch_size=chunk_rows, columns=list(dict.fromkeys(names)), use_threads=False
        ):
            numbers = row_numbers(done + 1, batch.num_rows)
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
            chunks = only_rows(self._parquet_cells([name], chunk_rows), only)
            rows, cells = zip(*((kept, columns[0]) for kept, columns in chunks), strict=True)
            numbers = pa.concat_arrays(list(rows))
            found.append(pa.concat_arrays(list(cells)))
        assert numbers is not None
        return numbers, found


def open_parquet_input(path: Path, name: str, column_map: Mapping[str, str]) -> ParquetInput:
    import pyarrow as pa

    with open_binary(path, name) as file:
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
    indexes = resolve_columns(schema.names, column_map, name)
    for field, index in indexes.items():
        column_type = schema.field(index).type
        if pa.types.is_nested(column_type):
            column = schema.names[index]
            read_as = "" if normalise_name(column) == field else f" (read as {field})"
            raise InputError(
                f"{name}: column {column!r}{read_as} holds nested values "
                f"({column_type}); it must hold one plain value per row"
            )
    if row_count == 0:
        raise InputError(f"{name} has columns but no rows")
    return ParquetInput(
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
            f"{name} is not a readable Parquet file ({first_line(error)}); export it again"
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
