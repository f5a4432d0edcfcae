"""How a row is judged from what the API answered and what it holds now
(pipeline.stages.outcomes and the snapshot's `decide`), where only a journal and a read can say
what happened."""

from __future__ import annotations

from pathlib import Path

from pipeline.core.models import FieldValues, Outcome, RowRequest, RowResult
from pipeline.stages.journal import Journal
from pipeline.stages.side_files import _undo_record
from pipeline.stages.snapshot import decide

CONVERSATION = "6f1c2a1e-4b7d-4c1e-9a8b-0d2e3f4a5b6c"
BEFORE = {"inbox_id": "inbox-a", "assignee_id": None, "status": "closed"}
#: A resumed row: its PATCH (inbox only) left before a kill; a proxy that fills the schema's
#: default status into a body without one reopened the conversation.
NOW = {"id": CONVERSATION, "inbox_id": "inbox-b", "assignee_id": None, "status": "open"}


def resumed_row() -> RowRequest:
    return RowRequest(
        1,
        CONVERSATION,
        FieldValues((("inbox_id", "inbox-b"),)),
        before=FieldValues(tuple(BEFORE.items())),
        maybe_applied=True,
    )


def test_a_resumed_row_answers_for_its_own_fields_when_nothing_says_the_api_sets_others() -> None:
    """The status may have been changed by someone else since the kill: not this run's to undo."""
    result = decide(resumed_row(), NOW, guarded=True)
    assert isinstance(result, RowResult) and result.outcome is Outcome.UPDATED
    assert result.difference is None
    undo = _undo_record(result, api_sets=frozenset())
    assert undo is not None and undo["inbox_id"] == "inbox-a" and undo["status"] == ""


def test_a_resumed_row_restores_a_field_the_run_saw_the_api_set() -> None:
    """Confirmed rows of the run showed the API setting status unasked: the resumed row's
    reopened status is the same side effect, and its undo must close it again (an undo PATCH
    without status would be reopened by the same proxy)."""
    result = decide(resumed_row(), NOW, guarded=True, api_sets=frozenset({"status"}))
    assert isinstance(result, RowResult) and result.outcome is Outcome.UPDATED
    assert result.difference == "status: closed -> open (not asked to change)"
    undo = _undo_record(result, api_sets=frozenset({"status"}))
    assert undo is not None
    assert (undo["inbox_id"], undo["status"]) == ("inbox-a", "closed")
    assert (undo["expect_inbox_id"], undo["expect_status"]) == ("inbox-b", "open")


def test_a_resumed_row_decided_before_the_api_was_seen_setting_a_field_is_still_undone() -> None:
    """The session decides a resumed row from its first read, before any of its own answers
    show the API setting status unasked; when the undo file is written at the session's end,
    they have: the row's status is the same side effect and is restored too. (Scenario seed
    11047: a kill, two resumes, and three rows left reopened by their undo.)"""
    result = decide(resumed_row(), NOW, guarded=True)  # nothing seen yet
    assert isinstance(result, RowResult) and result.difference is None
    undo = _undo_record(result, api_sets=frozenset({"status"}))  # seen by the session's end
    assert undo is not None
    assert (undo["inbox_id"], undo["status"]) == ("inbox-a", "closed")
    assert (undo["expect_inbox_id"], undo["expect_status"]) == ("inbox-b", "open")


def test_the_journal_names_the_fields_the_api_set_unasked(tmp_path: Path) -> None:
    with Journal.create(tmp_path, {}) as journal:
        assert journal.fields_the_api_set() == frozenset()
        journal.record(
            [
                RowResult(
                    1, CONVERSATION, Outcome.UPDATED,
                    difference="inbox_id: x -> y; status: closed -> open (not asked to change)",
                ),
                RowResult(
                    2, CONVERSATION, Outcome.UPDATED,
                    difference="assignee_id: null -> a (not asked to change)",
                ),
                RowResult(
                    3, CONVERSATION, Outcome.FAILED,
                    difference="inbox_id: null -> b (not asked to change)",
                ),
            ]
        )  # fmt: skip
        assert journal.fields_the_api_set() == frozenset({"status", "assignee_id"})
