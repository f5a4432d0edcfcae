"""The send stage on its own: groups through the real request path to the sandbox, in-process.

Each test hands `Sender` the groups a `Grouper` makes of some rows (as `orchestrator.tasks`
wires them) and checks the outcomes against the sandbox's table and its log of requests.
"""

from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from pipeline.core.models import (
    FIELDS,
    MAYBE_APPLIED,
    FieldValues,
    Guard,
    Outcome,
    RowRequest,
    RowResult,
)
from pipeline.sandbox import SandboxConfig, SandboxState
from tests.stages.in_process import (
    CLOSED,
    on_virtual_clock,
    request_path,
    requests,
    send_all,
    status,
    table,
)

UNKNOWN_ID = "00000000-0000-4000-8000-000000000000"
UNKNOWN_INBOX = "7f000000-0000-4000-8000-000000000000"


def open_rows(state: SandboxState, count: int) -> list[dict[str, Any]]:
    rows = [row for row in state.rows() if row["status"] == "open"][:count]
    assert len(rows) == count
    return rows


def guarded(number: int, row: dict[str, Any], change: FieldValues = CLOSED) -> RowRequest:
    """A row as the snapshot sends it on: its values read, its PATCH guarded by them."""
    return RowRequest(
        number,
        row["id"],
        change,
        guard=Guard.matching({name: row[name] for name, _ in change.values}),
        before=FieldValues.of({name: row[name] for name in FIELDS}),
    )


def send(
    state: SandboxState, rows: list[RowRequest], max_attempts: int = 3, **switches: Any
) -> list[RowResult]:
    """Every group the rows make, sent one after the other; the results in input order."""

    async def main() -> list[RowResult]:
        async with request_path(state, SandboxConfig(**switches), max_attempts) as (path, _):
            return sorted(await send_all(path, rows), key=lambda result: result.row)

    return on_virtual_clock(state, main)


def id_filter(entry: dict[str, Any]) -> str:
    return urllib.parse.parse_qs(entry["query"])["id"][0]


def test_a_group_goes_out_as_one_patch_and_every_row_ends_updated(tmp_path: Path) -> None:
    """N rows with one change: one PATCH `id=in.(…)` naming exactly them, each row updated."""
    state = table(tmp_path)
    rows = open_rows(state, 5)
    results = send(state, [RowRequest(n, row["id"], CLOSED) for n, row in enumerate(rows)])
    assert [result.outcome for result in results] == [Outcome.UPDATED] * 5
    assert all(status(state, row["id"]) == "closed" for row in rows)
    (patch,) = requests(tmp_path, "PATCH")
    assert id_filter(patch) == "in.(" + ",".join(row["id"] for row in rows) + ")"
    assert sorted(patch["ids_updated"]) == sorted(row["id"] for row in rows)
    assert requests(tmp_path, "GET") == []  # the answer named every row: nothing to read back
    assert state.stats()["updates"] == 5


def test_an_unknown_id_ends_not_found_and_the_others_updated(tmp_path: Path) -> None:
    """A group with an id not in the table: that row not_found (read back), the rest updated."""
    state = table(tmp_path)
    rows = open_rows(state, 3)
    ids = [rows[0]["id"], UNKNOWN_ID, rows[1]["id"], rows[2]["id"]]
    results = send(state, [RowRequest(n, each, CLOSED) for n, each in enumerate(ids)])
    outcomes = [result.outcome for result in results]
    assert outcomes == [Outcome.UPDATED, Outcome.NOT_FOUND, Outcome.UPDATED, Outcome.UPDATED]
    assert all(status(state, row["id"]) == "closed" for row in rows)
    assert state.row(UNKNOWN_ID) is None
    (patch,) = requests(tmp_path, "PATCH")
    assert UNKNOWN_ID in id_filter(patch)
    assert [id_filter(get) for get in requests(tmp_path, "GET")] == [f"eq.{UNKNOWN_ID}"]


def test_a_guarded_row_changed_meanwhile_ends_conflict_and_keeps_the_other_value(
    tmp_path: Path,
) -> None:
    """Someone changed a row after it was read: its guarded PATCH leaves it alone (conflict)."""
    state = table(tmp_path)
    rows = open_rows(state, 3)
    requests_ = [guarded(n, row) for n, row in enumerate(rows)]
    # Another writer, between the read and the PATCH.
    changed = [
        dict(row, status="archived") if row["id"] == rows[1]["id"] else row for row in state.rows()
    ]
    state.load_rows(changed)
    results = send(state, requests_)
    assert [result.outcome for result in results] == [
        Outcome.UPDATED,
        Outcome.CONFLICT,
        Outcome.UPDATED,
    ]
    assert [status(state, row["id"]) for row in rows] == ["closed", "archived", "closed"]
    assert len(requests(tmp_path, "PATCH")) == 1
    assert results[1].returned is not None and results[1].returned["status"] == "archived"


@pytest.mark.parametrize(
    ("switches", "expected"),
    [
        ({"fault_drop": 1.0}, Outcome.FAILED),  # committed, every answer lost
        ({"fault_applied_503": 1.0}, Outcome.FAILED),  # committed, then 503
        ({"fault_503": 1.0}, Outcome.FAILED),  # 503, nothing committed
        ({"fault_drop": 0.5, "fault_seed": 1}, Outcome.UPDATED),  # first answer lost, retry ok
    ],
    ids=lambda value: (
        ",".join(f"{k}={v}" for k, v in value.items()) if isinstance(value, dict) else str(value)
    ),
)
def test_a_lost_answer_never_claims_updated_unless_the_table_holds_the_target(
    tmp_path: Path, switches: dict[str, Any], expected: Outcome
) -> None:
    """Lost answers: `updated` only for rows at their target; the rest say they may have been
    changed (maybe_applied, with their before-values for the undo), never unchanged."""
    state = table(tmp_path)
    rows = open_rows(state, 3)
    results = send(state, [guarded(n, row) for n, row in enumerate(rows)], **switches)
    assert state.stats()["faults"], "the switch lost no answer"
    for row, result in zip(rows, results, strict=True):
        at_target = status(state, row["id"]) == "closed"
        assert result.outcome is expected
        if result.outcome is Outcome.UPDATED:
            assert at_target
        else:
            assert result.error_code == MAYBE_APPLIED
            assert result.before is not None and result.before["status"] == "open"
    committed = "fault_503" not in switches
    assert all((status(state, row["id"]) == "closed") is committed for row in rows)


def test_a_refused_group_is_split_once_and_every_row_rejected(tmp_path: Path) -> None:
    """A 409 on a group: tried again as two halves (three PATCHes in all), never row by row;
    refused again, every row is rejected and the table is unchanged."""
    state = table(tmp_path)
    rows = open_rows(state, 4)
    bad_inbox = FieldValues.of({"inbox_id": UNKNOWN_INBOX})
    results = send(state, [RowRequest(n, row["id"], bad_inbox) for n, row in enumerate(rows)])
    assert [result.outcome for result in results] == [Outcome.REJECTED] * 4
    assert {result.http_status for result in results} == {409}
    patches = requests(tmp_path, "PATCH")
    assert [len(patch["ids_matched"]) for patch in patches] == [4, 2, 2]
    assert not any(patch["committed"] for patch in patches)
    assert [state.row(row["id"]) for row in rows] == rows
