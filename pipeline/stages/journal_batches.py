"""The journal's results read as Arrow record batches (`Journal.result_batches`), with no
Python object per row: SQLite hands each column of a range of rows over as one string."""

from __future__ import annotations

import json
import queue
import sqlite3
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TypeVar

from pipeline.core import arrays
from pipeline.stages.journal_columns import ascending
from pipeline.stages.journal_schema import RESULT_COLUMNS

if TYPE_CHECKING:
    import pyarrow


def result_batches(
    connection: sqlite3.Connection, batch_rows: int
) -> Iterator[pyarrow.RecordBatch]:
    """Every recorded result in row order, as record batches of RESULT_COLUMNS (change,
    returned and before as the JSON text kept), streamed.

    Made without a Python object per row: for each range of `batch_rows` row numbers, one
    query has SQLite hand each column over as one string, which Arrow splits (columns
    never null: their values joined by a separator) or Python's json module parses (the
    others: a JSON array of the values that are not null, placed by their row numbers
    when some are null). The queries run a batch or two ahead, on a thread of their own
    (SQLite runs one without holding the GIL), while the caller uses the batch before.
    A million rows take about a second.
    """
    for size, texts in _prefetched(_result_texts(connection, batch_rows)):
        row = texts["row"]
        if isinstance(row, range):
            rows = arrays.integers(row)
        else:
            rows = _joined_column("row", size, row)
        columns = [rows]
        for name in RESULT_COLUMNS[1:]:
            text = texts[name]
            if name not in _NULLABLE_RESULTS:
                columns.append(_joined_column(name, size, text))
            else:
                columns.append(_sparse_column(name, size, rows, *text))
        batch = _result_batch(columns)
        if not ascending(batch.column("row")):
            batch = batch.sort_by("row")
        yield batch


def _result_texts(
    connection: sqlite3.Connection, batch_rows: int
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Per range of row numbers: its row count, and the texts each column is made from: the
    values joined (a JSON array for conversation ids holding the separator); the range
    itself for the row numbers of a range without a gap; for a column that may be null,
    (the values that are not null, their row numbers joined when some are null)."""
    parts = ["count(*)"]
    for name in RESULT_COLUMNS[1:]:  # the row numbers only when the range has gaps
        if name in _NULLABLE_RESULTS:
            # Most such columns are null on most rows of a run (an error), or on all (a
            # dry run's): only the values there are, not a null per row, are handed over.
            parts.append(f"json_group_array({name}) FILTER (WHERE {name} IS NOT NULL)")
        else:
            parts.append(_joined(name))
    query = f"SELECT {', '.join(parts)} FROM results WHERE row BETWEEN ? AND ?"
    # Apart, each is one step down the table's b-tree; together they would read every row.
    (first,) = connection.execute("SELECT min(row) FROM results").fetchone()
    (last,) = connection.execute("SELECT max(row) FROM results").fetchone()
    following = "SELECT min(row) FROM results WHERE row > ?"
    start = first
    while start is not None:
        bounds = (start, min(start + batch_rows - 1, last))
        # The next range starts at the next row recorded, however far: resumed and stopped
        # runs leave gaps.
        (start,) = connection.execute(following, (bounds[1],)).fetchone()
        # A range of rowids is read in rowid order: each column's values come in row order.
        size, *values = connection.execute(query, bounds).fetchone()
        texts: dict[str, Any] = {}
        given = iter(values)
        for name in RESULT_COLUMNS[1:]:
            if name not in _NULLABLE_RESULTS:
                texts[name] = next(given)
                continue
            present = json.loads(next(given))
            where = None
            if 0 < len(present) < size:
                where = _column_text(connection, "row", bounds, f"{name} IS NOT NULL")
            texts[name] = (present, where)
        if size == bounds[1] - bounds[0] + 1:
            texts["row"] = range(bounds[0], bounds[1] + 1)
        else:
            texts["row"] = _column_text(connection, "row", bounds)
        if texts["conversation_id"].count(_SEPARATOR) != size - 1:
            # A cell holding the separator itself (an id as written, say): as JSON.
            texts["conversation_id"] = json.loads(
                _column_text(connection, "conversation_id", bounds, as_json=True)
            )
        yield size, texts


def _column_text(
    connection: sqlite3.Connection,
    name: str,
    bounds: tuple[int, int],
    where: str = "1",
    as_json: bool = False,
) -> str:
    aggregate = f"json_group_array({name})" if as_json else _joined(name)
    query = f"SELECT {aggregate} FROM results WHERE row BETWEEN ? AND ? AND {where}"
    text: str = connection.execute(query, bounds).fetchone()[0]
    return text


_INTEGER_RESULTS = frozenset({"row", "http_status", "attempts"})


#: Joins the values of a text column that is never null (see `result_batches`).
_SEPARATOR = "\x1f"


def _joined(name: str) -> str:
    """The SQL aggregate handing a column of the results table over as its values joined."""
    separator = "','" if name in _INTEGER_RESULTS else "char(31)"
    return f"group_concat({name}, {separator})"


_Item = TypeVar("_Item")


def _prefetched(items: Iterator[_Item], depth: int = 2) -> Iterator[_Item]:
    """`items`, produced on a thread of its own, at most `depth` ahead of the consumer."""
    ready: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def hand_over(entry: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not hand_over((False, item)):
                    return
            hand_over((True, None))
        except BaseException as error:  # raised on the consumer's thread
            hand_over((True, error))

    thread = threading.Thread(target=produce, name="journal-reader", daemon=True)
    thread.start()
    try:
        while True:
            done, item = ready.get()
            if done:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
        thread.join()


_NULLABLE_RESULTS = frozenset(
    {"http_status", "error_code", "error_message", "returned", "difference", "before"}
)


def _result_type(name: str) -> pyarrow.DataType:
    import pyarrow as pa

    return pa.int64() if name in _INTEGER_RESULTS else pa.string()


def _joined_column(name: str, size: int, text: str | list[str]) -> pyarrow.Array:
    """A column of `size` values given as their text joined by "," (integers) or _SEPARATOR
    (see `_joined`), or as a list of them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = _result_type(name)
    if isinstance(text, list):
        column = arrays.strings(text)
    else:
        separator = "," if kind == pa.int64() else _SEPARATOR
        column = pc.split_pattern(arrays.strings([text]), separator).flatten()
    if len(column) != size:
        raise sqlite3.DatabaseError(f"{name}: {len(column)} values for {size} rows")
    return column if kind == pa.string() else pc.cast(column, kind)


def _sparse_column(
    name: str, size: int, rows: pyarrow.Array, present: list[Any], where: str | None
) -> pyarrow.Array:
    """A column that may be null, from the values `present`, at the row numbers `where`
    (joined by ",") when there are fewer than `size`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = _result_type(name)
    if not present:
        return pa.nulls(size, kind)
    values = arrays.integers(present) if kind == pa.int64() else arrays.strings(present)
    if where is None:
        return values
    # Each row's position among the rows that have a value: null where it has none.
    numbers = pc.split_pattern(arrays.strings([where]), ",").flatten()
    at = pc.index_in(rows, value_set=pc.cast(numbers, pa.int64()))
    taken: pyarrow.Array = pc.take(values, at)
    return taken


def _result_batch(columns: list[pyarrow.Array]) -> pyarrow.RecordBatch:
    import pyarrow as pa

    schema = pa.schema([(name, _result_type(name)) for name in RESULT_COLUMNS])
    return pa.RecordBatch.from_arrays(columns, schema=schema)
