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
import json
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pipeline.errors import InputError
from pipeline.models import Change, Outcome, RowRequest, RowResult

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

    # --- results ---------------------------------------------------------------------------

    def record(self, results: Iterable[RowResult]) -> None:
        """Make results durable; a row recorded again (resume) replaces its earlier record."""
        with self._transaction():
            self._connection.executemany(
                "INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [_to_record(result) for result in results],
            )

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

    def _transaction(self) -> _Transaction:
        return _Transaction(self._connection)


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
