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

import fcntl
import functools
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import arrays
from pipeline.errors import InputError
from pipeline.models import Change, Outcome, RowRequest, RowResult

if TYPE_CHECKING:
    import pyarrow

JOURNAL_NAME = "journal.sqlite"
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
        self._connection.executescript(_SCHEMA)
        self._lock_file: Any = None
        self._reader: sqlite3.Connection | None = None

    @classmethod
    def create(cls, run_dir: Path, meta: dict[str, Any]) -> Journal:
        path = run_dir / JOURNAL_NAME
        if path.exists():
            raise InputError(
                f"{run_dir} already holds a run: continue it with `mateo-bulk resume {run_dir}` "
                "or choose another --run-dir"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        journal = cls(path)
        journal.lock()
        journal.set_meta(meta)
        return journal

    @classmethod
    def open(cls, run_dir: Path) -> Journal:
        path = Path(run_dir) / JOURNAL_NAME
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
        self._lock_file = (self.run_dir / ".lock").open("a")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            self._lock_file = None
            raise InputError(f"{self.run_dir} is in use by another mateo-bulk process") from None

    def in_use(self) -> bool:
        """Whether a live process holds the run directory (its lock is taken)."""
        with (self.run_dir / ".lock").open("a") as probe:
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(probe, fcntl.LOCK_UN)
            return False

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
        with self._transaction():
            self._connection.executemany(
                "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [_to_record(result) for result in results],
            )

    def record_columns(self, columns: Mapping[str, pyarrow.Array]) -> None:
        """Make a batch of results durable in one transaction, given in columns: `row`,
        `conversation_id`, `outcome`, `error_message`, `change` (JSON, as `record` keeps it).

        The other columns are left empty and attempts 0: results of rows that were not sent
        (a dry run's). A row recorded again replaces its earlier record, as with `record`.
        """
        import pyarrow.compute as pc

        names = ("row", "conversation_id", "outcome", "change")
        insert = (
            "INSERT OR REPLACE INTO results (row, conversation_id, outcome, attempts, "
            "error_message, change) VALUES (?, ?, ?, 0, {}, ?)"
        )
        messages = columns["error_message"]
        with self._transaction():
            if not messages.null_count:
                rows = [columns[name].to_pylist() for name in names]
                rows.insert(3, messages.to_pylist())
                self._connection.executemany(insert.format("?"), zip(*rows, strict=True))
                return
            # Binding None costs the sqlite3 module about as much as the rest of the row: the
            # rows without a message (most) say NULL in SQL, the others come after them.
            given = pc.is_valid(messages)
            plain = [pc.filter(columns[name], pc.invert(given)).to_pylist() for name in names]
            self._connection.executemany(insert.format("NULL"), zip(*plain, strict=True))
            if messages.null_count < len(messages):
                rows = [pc.filter(columns[name], given).to_pylist() for name in names]
                rows.insert(3, pc.filter(messages, given).to_pylist())
                self._connection.executemany(insert.format("?"), zip(*rows, strict=True))

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
        counts = dict.fromkeys(Outcome, 0)
        for outcome, count in self._connection.execute(
            "SELECT outcome, COUNT(*) FROM results GROUP BY outcome"
        ):
            counts[Outcome(outcome)] = count
        return counts

    def differences(self) -> int:
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

        Made without a Python object per row: SQLite hands each column of a batch over as one
        string, which Arrow splits (the columns that are never null: their values joined by a
        separator) or Python's json module parses (the others: a JSON array, skipped when it
        holds only nulls). A million rows take a second or two, a tuple per row several.
        """
        parts = ["count(*)", "max(instr(conversation_id, char(31)))"]
        for name in RESULT_COLUMNS:
            if name in _NULLABLE_RESULTS:
                parts.append(f"json_group_array({name})")
            else:
                separator = "','" if name in _INTEGER_RESULTS else "char(31)"
                parts.append(f"group_concat({name}, {separator})")
        query = (
            f"SELECT {', '.join(parts)} FROM "
            "(SELECT * FROM results WHERE row > ? ORDER BY row LIMIT ?)"
        )
        after = -(2**63)
        while True:
            size, separator_at, *texts = self._connection.execute(
                query, (after, batch_rows)
            ).fetchone()
            if not size:
                return
            columns = []
            for name, text in zip(RESULT_COLUMNS, texts, strict=True):
                if name == "conversation_id" and separator_at:
                    # A cell holding the separator itself (an id as written, say).
                    text = self._connection.execute(
                        "SELECT json_group_array(conversation_id) FROM "
                        "(SELECT * FROM results WHERE row > ? ORDER BY row LIMIT ?)",
                        (after, batch_rows),
                    ).fetchone()[0]
                    columns.append(_json_column(name, size, text))
                elif name in _NULLABLE_RESULTS:
                    columns.append(_json_column(name, size, text))
                else:
                    columns.append(_joined_column(name, size, text))
            batch = _result_batch(columns)
            if not _ascending(batch.column("row")):
                batch = batch.sort_by("row")
            after = batch.column("row")[-1].as_py()
            yield batch

    def _transaction(self) -> _Transaction:
        return _Transaction(self._connection)


_INTEGER_RESULTS = frozenset({"row", "http_status", "attempts"})
_NULLABLE_RESULTS = frozenset(
    {"http_status", "error_code", "error_message", "returned", "difference", "before"}
)


def _result_type(name: str) -> pyarrow.DataType:
    import pyarrow as pa

    return pa.int64() if name in _INTEGER_RESULTS else pa.string()


@functools.lru_cache(maxsize=4)
def _all_nulls(size: int) -> str:
    return "[" + ",".join(["null"] * size) + "]"


def _joined_column(name: str, size: int, text: str) -> pyarrow.Array:
    """A column of `size` values given as their text joined by "," (integers) or \\x1f."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = _result_type(name)
    separator = "," if kind == pa.int64() else "\x1f"
    column = pc.split_pattern(arrays.strings([text]), separator).flatten()
    if len(column) != size:
        raise sqlite3.DatabaseError(f"{name}: {len(column)} values for {size} rows")
    return column if kind == pa.string() else pc.cast(column, kind)


def _json_column(name: str, size: int, text: str) -> pyarrow.Array:
    """A column of `size` values given as a JSON array."""
    import pyarrow as pa

    if len(text) == 5 * size + 1 and text == _all_nulls(size):
        return pa.nulls(size, _result_type(name))
    values = json.loads(text)
    return arrays.integers(values) if name in _INTEGER_RESULTS else arrays.strings(values)


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


class _Transaction:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def __enter__(self) -> None:
        self._connection.execute("BEGIN")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._connection.execute("ROLLBACK" if exc_type else "COMMIT")


def _to_record(result: RowResult) -> tuple[Any, ...]:
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
