"""The run journal: a SQLite file in the run directory that makes a run durable and resumable.

It holds the run's settings and the input's fingerprint; an intent per row before its PATCH
leaves (the row, its change and its before-values: a write-ahead log); then one record per row
once its outcome is known. Intents are committed before the request is sent, results a batch
at a time, before they count as done, in WAL mode with synchronous=NORMAL (a dry run's
results without syncs: see `columns_writer`): a commit survives the process being killed (the
OS has it). A row with an intent and no result was sent and may have been applied; resume
judges it with the before-values of its intent, so a row the run changed is reported
`updated` and can be undone even if its answer never arrived. The report is exported from
here, so a run resumed any number of times has one line per input row.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core.errors import InputError
from pipeline.core.models import FieldValues, Outcome, RowRequest, RowResult
from pipeline.core.run_dir import JOURNAL_NAME, RunDir
from pipeline.stages.journal_batches import result_batches
from pipeline.stages.journal_columns import ColumnBatch, ColumnsWriter, column_batch
from pipeline.stages.journal_schema import (
    RESULT_COLUMNS,
    change_from_json,
    insert_sql,
    prepare_tables,
    result_from_record,
    stored_values,
)

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


class Journal:
    """One run's journal; open with `create` (a new run) or `open` (resume, status, report)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.run_dir = path.parent
        self._connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            # Before anything else: a journal this code cannot read is refused unchanged.
            prepare_tables(self._connection, path)
        except BaseException:
            self._connection.close()
            raise
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute("PRAGMA synchronous=NORMAL")
        # 8 MB of page cache, not SQLite's 2 MB: a dry run's transaction of 20,000 results
        # dirties ~3 MB, and spilling them to the WAL before the commit costs its inserts ~12%.
        self._connection.execute("PRAGMA cache_size=-8192")
        self._lock_file: Any = None
        self._reader: sqlite3.Connection | None = None
        #: Rows per outcome, kept by the journal that made the results table while only
        #: ascending batches of columns (`record_columns`) go into it; None: ask the table.
        self._counts: dict[Outcome, int] | None = None
        #: Planned rows per change (its JSON), kept alongside `_counts` and dropped with it.
        self._planned_changes: dict[str, int] = {}
        self._last_row = 0

    @classmethod
    def create(cls, run_dir: Path, meta: dict[str, Any]) -> Journal:
        """A new run's journal, holding `meta` from the moment it exists.

        The journal is made under another name and renamed into place once its settings are
        in: a process killed on the way leaves no journal that `run` would take for a run and
        `resume` could not continue, only a draft the next `run` replaces.
        """
        names = RunDir(run_dir)
        if names.journal.exists():
            raise InputError(
                f"{run_dir} already holds a run: continue it with `mateo-bulk resume {run_dir}` "
                "or choose another --run-dir"
            )
        run_dir.mkdir(parents=True, exist_ok=True)
        lock_file = names.lock()
        try:
            for leftover in (names.journal_draft, *_sqlite_side_files(names.journal_draft)):
                leftover.unlink(missing_ok=True)
            draft = cls(names.journal_draft)
            with draft:
                draft.set_meta(meta)
            _flush(names.journal_draft)
            names.journal_draft.replace(names.journal)
            _flush(run_dir)
            journal = cls(names.journal)
        except BaseException:
            lock_file.close()
            raise
        journal._lock_file = lock_file
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
                insert_sql("meta", "INSERT OR REPLACE"),
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
        self._connection.execute(insert_sql("events"), (moment, kind, *counts, detail))

    # --- results ---------------------------------------------------------------------------

    def record(self, results: Iterable[RowResult]) -> None:
        """Make results durable; a row recorded again (resume) replaces its earlier record."""
        self._counts = None
        with self._transaction():
            self._connection.executemany(
                insert_sql("results", "INSERT OR REPLACE"),
                [stored_values(result) for result in results],
            )

    def record_columns(self, columns: Mapping[str, pyarrow.Array]) -> None:
        """Make a batch of results durable in one transaction, given in columns: `row`,
        `conversation_id`, `outcome`, `error_message`, `change` (JSON, as `record` keeps it).

        The other columns are left empty and attempts 0: results of rows that were not sent
        (a dry run's). A row recorded again replaces its earlier record, as with `record`.
        """
        self._insert(column_batch(columns))

    def _insert(self, batch: ColumnBatch) -> None:
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
        for change, count in batch.planned_changes.items():
            self._planned_changes[change] = self._planned_changes.get(change, 0) + count
        self._last_row = batch.last_row

    def columns_writer(self) -> ColumnsWriter:
        """`record_columns` on a thread of its own; `close()` it to wait for the last batch.

        Until it is closed, the journal does not wait for the disk (synchronous=OFF): what it
        records is results of rows that were not sent (a dry run's). A killed process loses
        none of them (the OS holds every write); a power loss could cost them, and a new dry
        run makes them again. A million rows record ~0.5 s faster without the syncs of the
        WAL's checkpoints.
        """
        self._connection.execute("PRAGMA synchronous=OFF")
        return ColumnsWriter(self._insert, self._sync_again)

    def _sync_again(self) -> None:
        self._connection.execute("PRAGMA synchronous=NORMAL")

    def record_intents(self, rows: Iterable[RowRequest]) -> None:
        """Make rows durable as sent, with their before-values, before their PATCH leaves.

        An intent already recorded keeps its before-values: a row sent again after a resume
        must still be undone to what it held before the run's first attempt.
        """
        with self._transaction():
            self._connection.executemany(
                insert_sql("intents") + " ON CONFLICT(row) DO UPDATE SET "
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

    def open_intents(self, first: int, last: int) -> dict[int, FieldValues | None]:
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
        return {row: None if before is None else change_from_json(before) for row, before in rows}

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

    def planned_changes(self) -> dict[str, int] | None:
        """Planned rows per change (its JSON), known like `counts` (None: ask the table). Those
        rows have no before-values: only a dry run records them, and it reads nothing."""
        if self._counts is None:
            return None
        return dict(self._planned_changes)

    def recorded(self) -> int:
        """Rows recorded, whatever their outcome: the sum of `counts`, with no grouping (a
        million rows: 0.05 s against counts' 0.4 s)."""
        if self._counts is not None:
            return sum(self._counts.values())
        (count,) = self._connection.execute("SELECT COUNT(*) FROM results").fetchone()
        return int(count)

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
        query = f"SELECT {', '.join(RESULT_COLUMNS)} FROM results"
        parameters: tuple[str, ...] = ()
        if outcomes is not None:
            parameters = tuple(outcome.value for outcome in outcomes)
            query += f" WHERE outcome IN ({','.join('?' * len(parameters))})"
        cursor = self._connection.execute(query + " ORDER BY row", parameters)
        while batch := cursor.fetchmany(10_000):
            yield from (result_from_record(record) for record in batch)

    def result_batches(self, batch_rows: int = 20_000) -> Iterator[pyarrow.RecordBatch]:
        """Every recorded result in row order, as record batches of RESULT_COLUMNS (change,
        returned and before as the JSON text kept), streamed, with no Python object per row
        (see `journal_batches.result_batches`: a million rows take about a second)."""
        return result_batches(self._connection, batch_rows)

    def _transaction(self) -> _Transaction:
        return _Transaction(self._connection)


class _Transaction:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def __enter__(self) -> None:
        self._connection.execute("BEGIN")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._connection.execute("ROLLBACK" if exc_type else "COMMIT")


def _sqlite_side_files(path: Path) -> tuple[Path, ...]:
    return tuple(path.with_name(path.name + suffix) for suffix in ("-wal", "-shm", "-journal"))


def _flush(path: Path) -> None:
    """fsync a file or directory, so that a rename after it cannot outlive what it renames."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
