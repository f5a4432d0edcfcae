"""The journal's version (`PRAGMA user_version`): what a journal written by this code, before
the version was kept, or by a newer mateo-bulk does when it is opened."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from pipeline.core import arrays
from pipeline.core.errors import InputError
from pipeline.core.models import FieldValues, Outcome, RowRequest, RowResult
from pipeline.stages.journal import JOURNAL_NAME, Journal
from pipeline.stages.journal_schema import JOURNAL_VERSION, RESULT_COLUMNS

CONVERSATION = "6f1c2a1e-4b7d-4c1e-9a8b-0d2e3f4a5b6c"

#: The tables a journal had before it kept a version, but for the results table's columns in
#: another order: a journal is read by its columns' names, never their positions.
UNVERSIONED_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE results (
    before TEXT,
    row INTEGER PRIMARY KEY,
    outcome TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    http_status INTEGER,
    attempts INTEGER NOT NULL,
    error_code TEXT,
    error_message TEXT,
    change TEXT NOT NULL,
    returned TEXT,
    difference TEXT
);
CREATE TABLE intents (
    row INTEGER PRIMARY KEY,
    conversation_id TEXT NOT NULL,
    change TEXT NOT NULL,
    before TEXT
);
"""


def version_of(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        (version,) = connection.execute("PRAGMA user_version").fetchone()
    return int(version)


def unversioned_journal(run_dir: Path) -> Path:
    """A journal as mateo-bulk wrote it before versions: one updated row, one sent and open."""
    run_dir.mkdir()
    path = run_dir / JOURNAL_NAME
    with sqlite3.connect(path) as connection:
        connection.executescript(UNVERSIONED_SCHEMA)
        connection.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [("state", '"stopped"'), ("rows", "2")],
        )
        connection.execute(
            "INSERT INTO results (row, conversation_id, outcome, attempts, change, before) "
            "VALUES (1, ?, 'updated', 1, ?, ?)",
            (CONVERSATION, '[["status", "open"]]', '{"status": "closed"}'),
        )
        connection.execute(
            "INSERT INTO intents (row, conversation_id, change, before) VALUES (2, ?, ?, ?)",
            (CONVERSATION, '[["status", "open"]]', '[["status", "snoozed"]]'),
        )
    assert version_of(path) == 0
    return path


def test_a_new_journal_has_the_current_version(tmp_path: Path) -> None:
    with Journal.create(tmp_path / "run", {"rows": 1}):
        pass
    assert version_of(tmp_path / "run" / JOURNAL_NAME) == JOURNAL_VERSION


def test_a_journal_written_before_versions_is_read_and_marked_current(tmp_path: Path) -> None:
    path = unversioned_journal(tmp_path / "run")
    with Journal.open(tmp_path / "run") as journal:
        assert journal.meta() == {"state": "stopped", "rows": 2}
        (result,) = journal.results()
        assert result == RowResult(
            1,
            CONVERSATION,
            Outcome.UPDATED,
            change=FieldValues((("status", "open"),)),
            attempts=1,
            before={"status": "closed"},
        )
        (batch,) = journal.result_batches()
        assert batch.schema.names == list(RESULT_COLUMNS)
        assert batch.column("before").to_pylist() == ['{"status": "closed"}']
        assert journal.open_intents(1, 2) == {2: FieldValues((("status", "snoozed"),))}
        assert journal.done_rows(1, 2) == {1}
        journal.record_event("resume")  # the events table came later: it is made
        journal.record_intents([RowRequest(3, CONVERSATION, FieldValues((("status", "open"),)))])
        journal.record(
            [
                RowResult(
                    3, CONVERSATION, Outcome.UNCHANGED, change=FieldValues((("status", "open"),))
                )
            ]
        )
        assert journal.counts()[Outcome.UNCHANGED] == 1
    assert version_of(path) == JOURNAL_VERSION


def test_a_journal_written_by_a_newer_version_is_refused_unchanged(tmp_path: Path) -> None:
    with Journal.create(tmp_path / "run", {"rows": 1}):
        pass
    path = tmp_path / "run" / JOURNAL_NAME
    with sqlite3.connect(path) as connection:
        connection.execute(f"PRAGMA user_version = {JOURNAL_VERSION + 1}")
    with pytest.raises(InputError) as refused:
        Journal.open(tmp_path / "run")
    message = str(refused.value)
    assert str(path) in message and "written by a newer mateo-bulk" in message
    assert version_of(path) == JOURNAL_VERSION + 1


def test_an_unversioned_journal_without_the_current_columns_is_refused(tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    path = tmp_path / "run" / JOURNAL_NAME
    with sqlite3.connect(path) as connection:
        connection.executescript(UNVERSIONED_SCHEMA.replace("before TEXT,\n", "", 1))
    with pytest.raises(InputError) as refused:
        Journal.open(tmp_path / "run")
    message = str(refused.value)
    assert str(path) in message and "results table lacks before" in message
    assert "start a new run" in message
    assert version_of(path) == 0


def test_only_a_dry_runs_columns_are_recorded_without_syncs(tmp_path: Path) -> None:
    """The journal waits for the disk (synchronous=NORMAL) except while a dry run's results
    go in through the columns writer (OFF), and again once the writer is closed."""

    def synchronous(journal: Journal) -> int:
        (level,) = journal._connection.execute("PRAGMA synchronous").fetchone()
        return int(level)

    off, normal = 0, 1
    with Journal.create(tmp_path / "run", {}) as journal:
        assert synchronous(journal) == normal
        writer = journal.columns_writer()
        assert synchronous(journal) == off
        writer.record(
            {
                "row": arrays.integers([1]),
                "conversation_id": arrays.strings(["3f0e9c1a-6b7d-4e2f-9a8b-1c2d3e4f5a6b"]),
                "outcome": arrays.strings([Outcome.PLANNED.value]),
                "error_message": arrays.strings([None]),
                "change": arrays.strings(['[["status", "closed"]]']),
            }
        )
        writer.close()
        assert synchronous(journal) == normal
        writer.close()  # a second close changes nothing
        assert synchronous(journal) == normal and journal.recorded() == 1
