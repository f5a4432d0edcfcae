"""The run journal: a SQLite file in the run directory that makes a run durable and resumable.

It holds the run's settings and the input's fingerprint; an intent per row before its PATCH
leaves (the row, its change and its before-values: a write-ahead log); then one record per row
once its outcome is known. Intents are committed before the request is sent, results a batch
at a time, before they count as done, in WAL mode with synchronous=NORMAL: a commit survives
the process being killed (the OS has it). A row with an intent and no result was sent and may
have been applied; resume judges it with the before-values of its intent, so a row the run
changed is reported `updated` and can be undone even if its answer never arrived. The report
is exported from here, so a run resumed any number of times has one line per input row.
"""

from __future__ import annotations

import json
import queue
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from pipeline.core import arrays
from pipeline.core.errors import InputError
from pipeline.core.models import Change, Outcome, RowRequest, RowResult
from pipeline.core.run_dir import JOURNAL_NAME, RunDir

if TYPE_CHECKING:
    import pyarrow

#: Outcomes that are final: a resumed run does not send these rows again.
FINAL_OUTCOMES = frozenset(
    {
        Outcome.UPDATED,
        Outcome.NOT_FOUND,
        Outcome.REJECTED,
        Outcome.INVALID,
        Outcome.FAILED,
        Outcome.PLANNED,
        Outcome.CONFLICT,
        Outcome.UNCHANGED,
    }
)

#: What a row of the events table marks: a session began (`start`, `resume`), its counts so
#: far (`progress`), or it ended (`stop` with the reason in `detail`, `finish`).
EVENT_KINDS = ("start", "resume", "progress", "stop", "finish")

#: The results table's columns, in order.
RESULT_COLUMNS: tuple[str, ...] = (
    "row",
    "conversation_id",
    "outcome",
    "http_status",
    "attempts",
    "error_code",
    "error_message",
    "change",
    "returned",
    "difference",
    "before",
)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    row INTEGER PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    outcome TEXT NOT NULL,
    http_status INTEGER,
    attempts INTEGER NOT NULL,
    error_code TEXT,
    error_message TEXT,
    change TEXT NOT NULL,
    returned TEXT,
    difference TEXT,
    before TEXT
);
CREATE TABLE IF NOT EXISTS intents (
    row INTEGER PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    change TEXT NOT NULL,
    before TEXT
);
CREATE TABLE IF NOT EXISTS events (
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    requests INTEGER NOT NULL,
    retries INTEGER NOT NULL,
    rate_limited INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    detail TEXT
);
"""


class Journal:
    """One run's journal; open with `create` (a new run) or `open` (resume, status, report)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.run_dir = path.parent
        self._connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=NORMAL")
        # 8 MB of page cache, not SQLite's 2 MB: a dry run's transaction of 20,000 results
        # dirties ~3 MB, and spilling them to the WAL before the commit costs its inserts ~12%.
        self._connection.execute("PRAGMA cache_size=-8192")
        self._connection.executescript(_SCHEMA)
        self._lock_file: Any = None
        self._reader: sqlite3.Connection | None = None
        #: Rows per outcome, kept by the journal that made the results table while only
        #: ascending batches of columns (`record_columns`) go into it; None: ask the table.
        self._counts: dict[Outcome, int] | None = None
        self._last_row = 0

    @classmethod
    def create(cls, run_dir: Path, meta: dict[str, Any]) -> Journal:
        path = RunDir(run_dir).journal
        if path.exists():
            raise InputError(
                f"{run_dir} already holds a run: continue it with `mateo-bulk resume {run_dir}` "
                "or choose another --run-dir"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        journal = cls(path)
        journal.lock()
        journal.set_meta(meta)
        journal._counts = dict.fromkeys(Outcome, 0)
        journal._last_row = -(2**63)
        return journal

    @classmethod
    def open(cls, run_dir: Path) -> Journal:
        path = RunDir(Path(run_dir)).journal
        if not path.is_file():
            raise InputError(f"{run_dir} is not a run directory (it has no {JOURNAL_NAME})")
        try:
            journal = cls(path)
            journal.meta()
        except sqlite3.DatabaseError as error:
            raise InputError(f"{path} cannot be read: {error}") from None
        return journal

    def lock(self) -> None:
        """Take the run directory for this process; a second process on it is refused."""
        self._lock_file = RunDir(self.run_dir).lock()

    def in_use(self) -> bool:
        """Whether a live process holds the run directory (its lock is taken)."""
        return RunDir(self.run_dir).in_use()

    def close(self) -> None:
        self._connection.close()
        if self._reader is not None:
            self._reader.close()
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- settings and state ----------------------------------------------------------------

    def set_meta(self, values: dict[str, Any]) -> None:
        with self._transaction():
            self._connection.executemany(
                "INSERT OR REPLACE INTO meta VALUES (?, ?)",
                [(key, json.dumps(value)) for key, value in values.items()],
            )

    def meta(self) -> dict[str, Any]:
        rows = self._connection.execute("SELECT key, value FROM meta").fetchall()
        return {key: json.loads(value) for key, value in rows}

    def record_event(
        self,
        kind: str,
        *,
        requests: int = 0,
        retries: int = 0,
        rate_limited: int = 0,
        rows: int = 0,
        detail: str | None = None,
        at: float | None = None,
    ) -> None:
        """One point of the run's timeline (the HTML report draws it): `kind` is one of
        EVENT_KINDS; the counts are the session's so far (they restart at `start` and `resume`).

        Written about once a second, not per request: the timeline costs the run nothing.
        """
        moment = time.time() if at is None else at
        counts = (requests, retries, rate_limited, rows)
        self._connection.execute(
            "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?)", (moment, kind, *counts, detail)
        )

    # --- results ---------------------------------------------------------------------------

    def record(self, results: Iterable[RowResult]) -> None:
        """Make results durable; a row recorded again (resume) replaces its earlier record."""
        self._counts = None
        with self._transaction():
            self._connection.executemany(
                "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [stored_values(result) for result in results],
            )

    def record_columns(self, columns: Mapping[str, pyarrow.Array]) -> None:
        """Make a batch of results durable in one transaction, given in columns: `row`,
        `conversation_id`, `outcome`, `error_message`, `change` (JSON, as `record` keeps it).

        The other columns are left empty and attempts 0: results of rows that were not sent
        (a dry run's). A row recorded again replaces its earlier record, as with `record`.
        """
        self._insert(_column_batch(columns))

    def _insert(self, batch: _ColumnBatch) -> None:
        with self._transaction():
            for rows in batch.inserts:
                rows.insert_into(self._connection)
        counts = self._counts
        if counts is None or not batch.outcomes:
            return
        if batch.first_row <= self._last_row or not batch.ascending:
            self._counts = None  # it may have replaced rows recorded before: not counted
            return
        for outcome, count in batch.outcomes.items():
            counts[Outcome(outcome)] += count
        self._last_row = batch.last_row

    def columns_writer(self) -> ColumnsWriter:
        """`record_columns` on a thread of its own; `close()` it to wait for the last batch."""
        return ColumnsWriter(self)

    def record_intents(self, rows: Iterable[RowRequest]) -> None:
        """Make rows durable as sent, with their before-values, before their PATCH leaves.

        An intent already recorded keeps its before-values: a row sent again after a resume
        must still be undone to what it held before the run's first attempt.
        """
        with self._transaction():
            self._connection.executemany(
                "INSERT INTO intents VALUES (?, ?, ?, ?) ON CONFLICT(row) DO UPDATE SET "
                "change = excluded.change, before = COALESCE(intents.before, excluded.before)",
                [
                    (
                        row.row,
                        row.conversation_id,
                        json.dumps(row.change.values),
                        None if row.before is None else json.dumps(row.before.values),
                    )
                    for row in rows
                ],
            )

    def open_intents(self, first: int, last: int) -> dict[int, Change | None]:
        """Rows in [first, last] sent by an earlier session whose outcome is still open.

        Their PATCH may have been applied; the value is their before-values, when known.
        """
        rows = self._read_connection().execute(
            "SELECT intents.row, intents.before FROM intents LEFT JOIN results "
            "ON results.row = intents.row WHERE intents.row BETWEEN ? AND ? AND "
            "(results.row IS NULL OR results.outcome = 'skipped' "
            "OR results.error_code = 'maybe_applied')",
            (first, last),
        )
        return {row: None if before is None else _change(before) for row, before in rows}

    def _read_connection(self) -> sqlite3.Connection:
        # Called from the reading thread while the event loop records results: a connection
        # of its own keeps the two from sharing one connection's transaction.
        if self._reader is None:
            self._reader = sqlite3.connect(self.path, check_same_thread=False)
        return self._reader

    def done_rows(self, first: int, last: int, *, retry_failed: bool = False) -> set[int]:
        """Rows in [first, last] that a resumed run must not send again."""
        final = {outcome.value for outcome in FINAL_OUTCOMES}
        if retry_failed:
            final.discard(Outcome.FAILED.value)
        placeholders = ",".join("?" * len(final))
        rows = self._read_connection().execute(
            f"SELECT row FROM results WHERE row BETWEEN ? AND ? AND outcome IN ({placeholders})",
            (first, last, *final),
        )
        return {row for (row,) in rows}

    def counts(self) -> dict[Outcome, int]:
        """Rows per outcome. The journal that made the table knows them while every batch
        went in after the one before (a dry run's): counting a million rows takes half a
        second, which the end of a dry run would spend twice (its summary, its HTML page)."""
        if self._counts is not None:
            return dict(self._counts)
        counts = dict.fromkeys(Outcome, 0)
        for outcome, count in self._connection.execute(
            "SELECT outcome, COUNT(*) FROM results GROUP BY outcome"
        ):
            counts[Outcome(outcome)] = count
        return counts

    def differences(self) -> int:
        if self._counts is not None and not self._counts[Outcome.UPDATED]:
            return 0  # only updated rows can have one
        (count,) = self._connection.execute(
            "SELECT COUNT(*) FROM results WHERE outcome = 'updated' AND difference IS NOT NULL"
        ).fetchone()
        return int(count)

    def unasked_changes(self) -> tuple[int, str | None]:
        """Updated rows where a field the run did not ask to change changed: count, example."""
        count, example = self._connection.execute(
            "SELECT COUNT(*), MIN(difference) FROM results WHERE outcome = 'updated' "
            "AND difference LIKE '%not asked to change%'"
        ).fetchone()
        return int(count), example

    def rows_with(self, outcomes: Iterable[Outcome]) -> set[int]:
        """The row numbers of the results with these outcomes (no record made per row)."""
        values = tuple(outcome.value for outcome in outcomes)
        query = f"SELECT row FROM results WHERE outcome IN ({','.join('?' * len(values))})"
        return {row for (row,) in self._connection.execute(query, values)}

    def fields_the_api_set(self) -> frozenset[str]:
        """Fields that confirmed updates show changed though the run did not ask (a proxy
        filling a default): the API's doing, as the difference column records it."""
        texts = self._connection.execute(
            "SELECT DISTINCT difference FROM results WHERE outcome = 'updated' "
            "AND difference LIKE '%not asked to change%' LIMIT 100"
        ).fetchall()
        return frozenset(
            part.split(":", 1)[0]
            for (text,) in texts
            for part in text.split("; ")
            if part.endswith("(not asked to change)")
        )

    def results(self, outcomes: Iterable[Outcome] | None = None) -> Iterator[RowResult]:
        """Every recorded result in row order (optionally only some outcomes), streamed."""
        query = "SELECT * FROM results"
        parameters: tuple[str, ...] = ()
        if outcomes is not None:
            parameters = tuple(outcome.value for outcome in outcomes)
            query += f" WHERE outcome IN ({','.join('?' * len(parameters))})"
        cursor = self._connection.execute(query + " ORDER BY row", parameters)
        while batch := cursor.fetchmany(10_000):
            yield from (_from_record(record) for record in batch)

    def result_batches(self, batch_rows: int = 20_000) -> Iterator[pyarrow.RecordBatch]:
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
        for size, texts in _prefetched(self._result_texts(batch_rows)):
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
            if not _ascending(batch.column("row")):
                batch = batch.sort_by("row")
            yield batch

    def _result_texts(self, batch_rows: int) -> Iterator[tuple[int, dict[str, Any]]]:
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
        (first,) = self._connection.execute("SELECT min(row) FROM results").fetchone()
        (last,) = self._connection.execute("SELECT max(row) FROM results").fetchone()
        following = "SELECT min(row) FROM results WHERE row > ?"
        start = first
        while start is not None:
            bounds = (start, min(start + batch_rows - 1, last))
            # The next range starts at the next row recorded, however far: resumed and stopped
            # runs leave gaps.
            (start,) = self._connection.execute(following, (bounds[1],)).fetchone()
            # A range of rowids is read in rowid order: each column's values come in row order.
            size, *values = self._connection.execute(query, bounds).fetchone()
            texts: dict[str, Any] = {}
            given = iter(values)
            for name in RESULT_COLUMNS[1:]:
                if name not in _NULLABLE_RESULTS:
                    texts[name] = next(given)
                    continue
                present = json.loads(next(given))
                where = None
                if 0 < len(present) < size:
                    where = self._column_text("row", bounds, f"{name} IS NOT NULL")
                texts[name] = (present, where)
            if size == bounds[1] - bounds[0] + 1:
                texts["row"] = range(bounds[0], bounds[1] + 1)
            else:
                texts["row"] = self._column_text("row", bounds)
            if texts["conversation_id"].count(_SEPARATOR) != size - 1:
                # A cell holding the separator itself (an id as written, say): as JSON.
                texts["conversation_id"] = json.loads(
                    self._column_text("conversation_id", bounds, as_json=True)
                )
            yield size, texts

    def _column_text(
        self, name: str, bounds: tuple[int, int], where: str = "1", as_json: bool = False
    ) -> str:
        aggregate = f"json_group_array({name})" if as_json else _joined(name)
        query = f"SELECT {aggregate} FROM results WHERE row BETWEEN ? AND ? AND {where}"
        text: str = self._connection.execute(query, bounds).fetchone()[0]
        return text

    def _transaction(self) -> _Transaction:
        return _Transaction(self._connection)


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


def _ascending(rows: pyarrow.Array) -> bool:
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


class _ColumnBatch(NamedTuple):
    """A batch of columns to record (see `record_columns`): its inserts, its rows per outcome,
    its first and last row, and whether its rows ascend (so none repeats)."""

    inserts: list[_Rows]
    outcomes: dict[str, int]
    first_row: int
    last_row: int
    ascending: bool


def _column_batch(columns: Mapping[str, pyarrow.Array]) -> _ColumnBatch:
    import pyarrow.compute as pc

    rows = columns["row"]
    outcomes = {
        entry["values"]: entry["counts"]
        for entry in pc.value_counts(columns["outcome"]).to_pylist()
    }
    if not len(rows):
        return _ColumnBatch([], outcomes, 0, 0, True)
    bounds = pc.min_max(rows)
    return _ColumnBatch(
        _column_inserts(columns),
        outcomes,
        bounds["min"].as_py(),
        bounds["max"].as_py(),
        _ascending(rows),
    )


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
    `record` or by `close`."""

    def __init__(self, journal: Journal) -> None:
        self._journal = journal
        self._queue: queue.Queue[_ColumnBatch | None] = queue.Queue(maxsize=2)
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="journal-writer", daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (inserts := self._queue.get()) is not None:
            if self._failure is None:
                try:
                    self._journal._insert(inserts)
                except BaseException as error:  # raised on the caller's thread
                    self._failure = error

    def record(self, columns: Mapping[str, pyarrow.Array]) -> None:
        if self._failure is not None:
            raise self._failure
        self._queue.put(_column_batch(columns))

    def close(self) -> None:
        """Wait until every batch given is committed; raise what failed, if anything."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self._failure is not None:
            raise self._failure


class _Transaction:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def __enter__(self) -> None:
        self._connection.execute("BEGIN")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._connection.execute("ROLLBACK" if exc_type else "COMMIT")


def stored_values(result: RowResult) -> tuple[Any, ...]:
    """A result as the journal stores it: RESULT_COLUMNS, the mappings as JSON text."""
    return (
        result.row,
        result.conversation_id,
        result.outcome.value,
        result.http_status,
        result.attempts,
        result.error_code,
        result.error_message,
        json.dumps(result.change.values),
        None if result.returned is None else json.dumps(dict(result.returned)),
        result.difference,
        None if result.before is None else json.dumps(dict(result.before)),
    )


def _from_record(record: tuple[Any, ...]) -> RowResult:
    (
        row,
        conversation_id,
        outcome,
        status,
        attempts,
        code,
        message,
        change,
        returned,
        diff,
        before,
    ) = record
    return RowResult(
        row,
        conversation_id,
        Outcome(outcome),
        change=_change(change),
        http_status=status,
        attempts=attempts,
        error_code=code,
        error_message=message,
        returned=None if returned is None else json.loads(returned),
        difference=diff,
        before=None if before is None else json.loads(before),
    )


def _change(text: str) -> Change:
    return Change(tuple(tuple(pair) for pair in json.loads(text)))
