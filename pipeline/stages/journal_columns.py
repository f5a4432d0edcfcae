"""Results recorded in columns (`Journal.record_columns`): a batch of Arrow columns turned into
few, wide INSERT statements, and the writer that commits them on a thread of its own."""

from __future__ import annotations

import queue
import sqlite3
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from pipeline.core import arrays
from pipeline.core.models import Outcome

if TYPE_CHECKING:
    import pyarrow


def ascending(rows: pyarrow.Array) -> bool:
    """Whether each row number is greater than the one before (so none repeats)."""
    import pyarrow.compute as pc

    if len(rows) < 2:
        return True
    steps = pc.subtract(rows.slice(1), rows.slice(0, len(rows) - 1))
    return bool(pc.min(steps).as_py() > 0)


class _Rows(NamedTuple):
    """Rows for the results table: the SQL of one row's VALUES and its values, flat."""

    values_sql: str
    width: int
    values: list[Any]

    def insert_into(self, connection: sqlite3.Connection) -> None:
        # Binding is what costs: a statement of many rows' VALUES is bound and run once per
        # _ROWS_PER_INSERT rows, a third faster than a statement per row.
        head = (
            "INSERT OR REPLACE INTO results (row, conversation_id, outcome, attempts, "
            "error_message, change) VALUES "
        )
        step = _ROWS_PER_INSERT * self.width
        whole = len(self.values) // step * step
        if whole:
            statement = head + ",".join([self.values_sql] * _ROWS_PER_INSERT)
            parts = (self.values[at : at + step] for at in range(0, whole, step))
            connection.executemany(statement, parts)
        if whole < len(self.values):
            rest = (len(self.values) - whole) // self.width
            connection.execute(head + ",".join([self.values_sql] * rest), self.values[whole:])


#: Rows per INSERT statement: 500 bound values at most, under any SQLite's limit (999).
_ROWS_PER_INSERT = 100


def _interleaved(columns: list[list[Any]]) -> list[Any]:
    """The values of `columns` row by row, in one flat list (made by slice assignment)."""
    width = len(columns)
    values: list[Any] = [None] * (width * len(columns[0]))
    for position, column in enumerate(columns):
        values[position::width] = column
    return values


class ColumnBatch(NamedTuple):
    """A batch of columns to record (see `record_columns`): its inserts, its rows per outcome,
    its planned rows per change, its first and last row, and whether its rows ascend (so none
    repeats)."""

    inserts: list[_Rows]
    outcomes: dict[str, int]
    planned_changes: dict[str, int]
    first_row: int
    last_row: int
    ascending: bool


def column_batch(columns: Mapping[str, pyarrow.Array]) -> ColumnBatch:
    import pyarrow.compute as pc

    rows = columns["row"]
    outcomes = {
        entry["values"]: entry["counts"]
        for entry in pc.value_counts(columns["outcome"]).to_pylist()
    }
    if not len(rows):
        return ColumnBatch([], outcomes, {}, 0, 0, True)
    bounds = pc.min_max(rows)
    return ColumnBatch(
        _column_inserts(columns),
        outcomes,
        _planned_changes(columns),
        bounds["min"].as_py(),
        bounds["max"].as_py(),
        ascending(rows),
    )


def _planned_changes(columns: Mapping[str, pyarrow.Array]) -> dict[str, int]:
    """Planned rows per change: every row's, less the other rows' (a few). Counting them from
    a copy of the planned rows' changes raised a million-row dry run's peak by ~7 MB."""
    import pyarrow.compute as pc

    def tally(changes: pyarrow.Array) -> dict[str, int]:
        return {each["values"]: each["counts"] for each in pc.value_counts(changes).to_pylist()}

    changes = tally(columns["change"])
    others = pc.not_equal(columns["outcome"], arrays.string(Outcome.PLANNED.value))
    for change, count in tally(pc.filter(columns["change"], others)).items():
        changes[change] -= count
    return {change: count for change, count in changes.items() if count}


def _column_inserts(columns: Mapping[str, pyarrow.Array]) -> list[_Rows]:
    """The rows that record a batch of columns (see `record_columns`)."""
    import pyarrow.compute as pc

    outcomes, messages = columns["outcome"], columns["error_message"]

    def values(mask: pyarrow.Array, *names: str) -> list[Any]:
        return _interleaved([pc.filter(columns[name], mask).to_pylist() for name in names])

    # The rows without a message (most) say NULL in SQL and their outcome as a literal, one
    # statement per outcome: fewer values to bind. The other rows come after them.
    inserts = []
    plain = pc.is_null(messages)
    for entry in pc.value_counts(pc.filter(outcomes, plain)).to_pylist():
        outcome = Outcome(entry["values"]).value  # an enum value: safe in SQL text
        same = pc.and_(plain, pc.equal(outcomes, arrays.string(outcome)))
        row_sql = f"(?, ?, '{outcome}', 0, NULL, ?)"
        inserts.append(_Rows(row_sql, 3, values(same, "row", "conversation_id", "change")))
    if messages.null_count < len(messages):
        names = ("row", "conversation_id", "outcome", "error_message", "change")
        inserts.append(_Rows("(?, ?, ?, 0, ?, ?)", 5, values(pc.invert(plain), *names)))
    return inserts


class ColumnsWriter:
    """Records batches of columns (`Journal.record_columns`) on a thread of its own, at most two
    batches behind the caller, who turns each batch into Python rows: what the writer's thread
    does is SQLite's, which runs without the GIL for each row, so the caller makes its next
    batch meanwhile. An error on the writer's thread is raised to the caller by the next
    `record` or by `close`; `closed` is called once, when the last batch is in."""

    def __init__(self, insert: Callable[[ColumnBatch], None], closed: Callable[[], None]) -> None:
        self._insert = insert
        self._closed = closed
        self._queue: queue.Queue[ColumnBatch | None] = queue.Queue(maxsize=2)
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="journal-writer", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (inserts := self._queue.get()) is not None:
            if self._failure is None:
                try:
                    self._insert(inserts)
                except BaseException as error:  # raised on the caller's thread
                    self._failure = error

    def record(self, columns: Mapping[str, pyarrow.Array]) -> None:
        if self._failure is not None:
            raise self._failure
        self._queue.put(column_batch(columns))

    def close(self) -> None:
        """Wait until every batch given is committed; raise what failed, if anything."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
            self._closed()
        if self._failure is not None:
            raise self._failure
