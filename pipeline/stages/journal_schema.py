"""The journal's tables, their version and how a result is stored in them.

The version is SQLite's `PRAGMA user_version`: a journal made by this code has JOURNAL_VERSION.
Opening one checks it first: a journal written before the version was kept (0) with the tables
of version 1 is marked version 1 (the tables are the same); one whose tables are not those is
refused, and so is one written by a newer mateo-bulk, whose tables this code cannot know.
Every query names its columns, so the order they were made in does not matter.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from pipeline.core.errors import InputError
from pipeline.core.models import FieldValues, Outcome, RowResult

#: The version of the journal's tables this code writes and reads (`PRAGMA user_version`).
JOURNAL_VERSION = 1

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

#: Each table's columns at JOURNAL_VERSION, as _SCHEMA makes them.
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    "meta": ("key", "value"),
    "results": RESULT_COLUMNS,
    "intents": ("row", "conversation_id", "change", "before"),
    "events": ("time", "kind", "requests", "retries", "rate_limited", "rows", "detail"),
}


def insert_sql(table: str, verb: str = "INSERT") -> str:
    """`verb INTO table (its columns) VALUES (?, ...)`: an insert that names every column."""
    names = TABLE_COLUMNS[table]
    return f"{verb} INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"


def prepare_tables(connection: sqlite3.Connection, path: Path) -> None:
    """Make a new journal's tables at JOURNAL_VERSION, or check an existing journal's version:
    one written before the version was kept is marked current when its tables are (it gains
    a table it lacks, as journals always did: the events table came later); anything else is
    refused with an InputError naming the file, before the journal is used or changed."""
    (version,) = connection.execute("PRAGMA user_version").fetchone()
    if version == JOURNAL_VERSION:
        return
    if version > JOURNAL_VERSION:
        raise InputError(
            f"{path} was written by a newer mateo-bulk (journal version {version}; this one "
            f"knows up to {JOURNAL_VERSION}): resume or read it with that version or later"
        )
    if version < 0:
        raise InputError(f"{path} is not a mateo-bulk journal (its version is {version})")
    for table, expected in TABLE_COLUMNS.items():
        present = {
            name for (name,) in connection.execute(f"SELECT name FROM pragma_table_info('{table}')")
        }
        missing = [name for name in expected if name not in present]
        if present and missing:
            raise InputError(
                f"{path} was written by an early mateo-bulk whose {table} table lacks "
                f"{', '.join(missing)}: it cannot be resumed or read; start a new run "
                "(the run directory's report holds its results)"
            )
    # One transaction: a journal has all its tables and its version, or is as it was.
    connection.executescript(
        f"BEGIN IMMEDIATE; {_SCHEMA} PRAGMA user_version = {JOURNAL_VERSION}; COMMIT;"
    )


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


def result_from_record(record: tuple[Any, ...]) -> RowResult:
    """A result from the values of its RESULT_COLUMNS, in that order (see `stored_values`)."""
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
        change=change_from_json(change),
        http_status=status,
        attempts=attempts,
        error_code=code,
        error_message=message,
        returned=None if returned is None else json.loads(returned),
        difference=diff,
        before=None if before is None else json.loads(before),
    )


def change_from_json(text: str) -> FieldValues:
    """A change as the journal keeps it: the JSON of its (field, value) pairs."""
    return FieldValues(tuple(tuple(pair) for pair in json.loads(text)))
