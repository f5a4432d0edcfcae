"""The snapshot stage on its own: reads through the real request path to the sandbox, in-process.

`snapshot_rows` reads the rows and sorts them into results (unchanged, not found) and rows to
send; where a test says so, the rows to send then go through `Grouper` and `Sender` as
`orchestrator.tasks` wires them, so the table and the request log show what was sent.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import anyio
import pytest

from pipeline.core.models import FIELDS, FieldValues, Guard, Outcome, RowRequest, RowResult
from pipeline.sandbox import SandboxConfig, SandboxState
from pipeline.stages.snapshot import guard_expected, snapshot_rows
from tests.stages.in_process import (
    CLOSED,
    on_virtual_clock,
    request_path,
    requests,
    send_all,
    status,
    table,
)

UNKNOWN_IDS = ["00000000-0000-4000-8000-000000000000", "00000000-0000-4000-8000-000000000001"]

Stage = tuple[list[RowResult], list[RowRequest]]


def with_status(state: SandboxState, status: str, count: int) -> list[dict[str, Any]]:
    rows = [row for row in state.rows() if row["status"] == status][:count]
    assert len(rows) == count
    return rows


def set_status(state: SandboxState, row_id: str, status: str) -> None:
    """Another writer changes a row."""
    state.load_rows(
        dict(row, status=status) if row["id"] == row_id else row for row in state.rows()
    )


def close(ids: list[str]) -> list[RowRequest]:
    return [RowRequest(n, each, CLOSED) for n, each in enumerate(ids)]


def run_stages(
    state: SandboxState,
    rows: list[RowRequest],
    *,
    snapshot: bool = True,
    send: bool = False,
    before_send: Any = None,
    **switches: Any,
) -> Stage:
    """Snapshot the rows (guarded), then send what it passes on if `send`: (results, passed on).

    `before_send(state)` runs between the two, as another writer would."""
    config = SandboxConfig(**switches)

    async def main() -> Stage:
        async with request_path(state, config) as (path, control):
            results: list[RowResult] = []
            passed = [guard_expected(row, True) for row in rows]
            if snapshot:
                send_rows, receive_rows = anyio.create_memory_object_stream[list[RowRequest]](1)
                send_checked, receive_checked = anyio.create_memory_object_stream[list[RowRequest]](
                    math.inf
                )
                send_results, receive_results = anyio.create_memory_object_stream[list[RowResult]](
                    math.inf
                )
                async with send_rows:
                    await send_rows.send(rows)
                await snapshot_rows(
                    path,
                    control,
                    receive_rows,
                    send_checked,
                    send_results,
                    concurrency=2,
                    guarded=True,
                    plan_only=False,
                )
                with receive_checked, receive_results:
                    passed = [row async for chunk in receive_checked for row in chunk]
                    results = [result async for chunk in receive_results for result in chunk]
            if send:
                if before_send is not None:
                    before_send(state)
                results += await send_all(path, passed)
            return sorted(results, key=lambda result: result.row), passed

    return on_virtual_clock(state, main)


def test_rows_already_at_their_target_are_unchanged_and_cost_no_patch(tmp_path: Path) -> None:
    """Rows read at their target are `unchanged` and left out of the PATCH; the rest are sent."""
    state = table(tmp_path)
    done, to_do = with_status(state, "closed", 3), with_status(state, "open", 3)
    ids = [row["id"] for pair in zip(done, to_do, strict=True) for row in pair]
    results, passed = run_stages(state, close(ids), send=True)
    assert [result.outcome for result in results] == [Outcome.UNCHANGED, Outcome.UPDATED] * 3
    assert [row.conversation_id for row in passed] == [row["id"] for row in to_do]
    (patch,) = requests(tmp_path, "PATCH")
    assert sorted(patch["ids_matched"]) == sorted(row["id"] for row in to_do)
    assert state.stats()["updates"] == 3
    assert [state.row(row["id"]) for row in done] == done  # not even updated_at moved


def test_rows_not_in_the_table_are_not_found_and_not_sent(tmp_path: Path) -> None:
    """An id the read does not return is `not_found`, and only the rows found are passed on."""
    state = table(tmp_path)
    present = [row["id"] for row in with_status(state, "open", 2)]
    results, passed = run_stages(state, close([present[0], *UNKNOWN_IDS, present[1]]))
    assert [(result.conversation_id, result.outcome) for result in results] == [
        (each, Outcome.NOT_FOUND) for each in UNKNOWN_IDS
    ]
    assert [row.conversation_id for row in passed] == present
    assert requests(tmp_path, "PATCH") == []


@pytest.mark.parametrize("drop_content_range", [False, True], ids=["with-total", "no-total"])
def test_a_short_get_page_never_makes_a_present_row_not_found(
    tmp_path: Path, drop_content_range: bool
) -> None:
    """A proxy that returns 7 rows per GET (with or without a total): every row present is
    found (sent on, or unchanged), and only the ids not in the table are not_found."""
    state = table(tmp_path)
    present = [row["id"] for row in state.rows()[:30]]
    results, passed = run_stages(
        state,
        close(present + UNKNOWN_IDS),
        max_rows=7,
        drop_content_range=drop_content_range,
    )
    not_found = [r.conversation_id for r in results if r.outcome is Outcome.NOT_FOUND]
    assert not_found == UNKNOWN_IDS
    found = [r.conversation_id for r in results] + [row.conversation_id for row in passed]
    assert sorted(found) == sorted(present + UNKNOWN_IDS)
    assert len(requests(tmp_path, "GET")) >= math.ceil(30 / 7)


def test_rows_sent_on_carry_a_guard_from_the_values_read(tmp_path: Path) -> None:
    """A row passed on holds every field as read and is guarded by the ones it changes: a row
    another writer changes before the PATCH is left alone (`conflict`)."""
    state = table(tmp_path)
    rows = with_status(state, "open", 2) + with_status(state, "archived", 2)
    changed = rows[1]["id"]
    results, passed = run_stages(
        state,
        close([row["id"] for row in rows]),
        send=True,
        before_send=lambda state: set_status(state, changed, "archived"),
    )
    for row, request in zip(rows, passed, strict=True):
        assert request.before == FieldValues.of({name: row[name] for name in FIELDS})
        assert request.guard == Guard.of({"status": f"eq.{row['status']}"})
    outcomes = [result.outcome for result in results]
    assert outcomes == [Outcome.UPDATED, Outcome.CONFLICT, Outcome.UPDATED, Outcome.UPDATED]
    assert status(state, changed) == "archived"
    assert len(requests(tmp_path, "PATCH")) == 2  # one group per guard


def test_without_a_snapshot_expected_values_still_guard_the_patch(tmp_path: Path) -> None:
    """`guard_expected`: a row's expect_* values guard its PATCH (a row no longer holding them
    ends `conflict`, unchanged); unguarded runs send the row as it is."""
    state = table(tmp_path)
    rows = with_status(state, "open", 2)
    expect_open = FieldValues.of({"status": "open"})
    requests_ = [
        RowRequest(n, row["id"], CLOSED, expected=expect_open) for n, row in enumerate(rows)
    ]
    assert guard_expected(requests_[0], False) is requests_[0]
    set_status(state, rows[1]["id"], "archived")
    results, _ = run_stages(state, requests_, snapshot=False, send=True)
    assert [result.outcome for result in results] == [Outcome.UPDATED, Outcome.CONFLICT]
    assert [status(state, row["id"]) for row in rows] == ["closed", "archived"]
    assert requests(tmp_path, "GET") and len(requests(tmp_path, "PATCH")) == 1
