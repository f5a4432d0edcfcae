"""The snapshot stage: read each row's current values before changing it.

With the values in hand, a row already in its target state costs no PATCH (`unchanged`), a
conversation that does not exist costs none either (`not_found`), and every PATCH carries the
values it was planned from as a guard, so a row someone changed in the meantime matches
nothing and is left alone (`conflict`). Every field is read, not only the changed ones, so that
a field the run did not ask to change and that changed anyway is caught and can be undone. The
snapshot costs one GET per 50 rows (more only where the API pages shorter or refuses `in.`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from pipeline.api.client import returned_values
from pipeline.api.request_path import PAGE_SIZE, RequestPath, RunControl
from pipeline.core.errors import RemoteError, RunStopped
from pipeline.core.models import (
    ConversationIds,
    FieldValues,
    Guard,
    Outcome,
    RowRequest,
    RowResult,
    same_value,
)
from pipeline.stages.outcomes import before_values, holds_target, skipped, updated
from pipeline.stages.send import row_results


def decide(
    row: RowRequest,
    current: dict[str, Any] | None,
    *,
    guarded: bool,
    api_sets: frozenset[str] = frozenset(),
) -> RowRequest | RowResult:
    """What to do with a row given its current values: send it (guarded), or report it now."""
    if current is None:
        return RowResult(
            row.row,
            row.conversation_id,
            Outcome.NOT_FOUND,
            change=row.change,
            http_status=200,
            error_message="no such conversation when read",
        )
    values = returned_values(current)
    then = before_values(row) if row.maybe_applied else None
    if row.maybe_applied and holds_target(row, values):
        # An earlier session sent this row and never learned the answer: judged against the
        # values it had then, not now (now they may be this run's own doing).
        if then is None or not holds_target(row, then):
            return updated(
                row, values, http_status=200, attempts=0, own_fields_only=True, api_sets=api_sets
            )
    if then is not None:
        must_hold = {name: then.get(name) for name, _ in row.change.values}
        why = "changed since the run read them"
    else:
        must_hold, why = row.expected.body(), "no longer hold the expected values"
    mismatched = [
        name for name, value in must_hold.items() if not same_value(values.get(name), value)
    ]
    if mismatched:
        return RowResult(
            row.row,
            row.conversation_id,
            Outcome.CONFLICT,
            change=row.change,
            returned=values,
            error_message=f"{', '.join(mismatched)} {why}; left alone",
        )
    before = row.before if then is not None and row.before else FieldValues.of(values)
    if then is None and holds_target(row, values):
        return RowResult(
            row.row,
            row.conversation_id,
            Outcome.UNCHANGED,
            change=row.change,
            returned=values,
            before=before.body(),
        )
    return _guarded(row, before, guarded)


def _guarded(row: RowRequest, before: FieldValues, guarded: bool) -> RowRequest:
    """The row with its before-values, and guarded by those of the fields it changes.

    Only the changed fields guard it: a guard on every field would split groups by values the
    run does not touch, and cost requests.
    """
    if not guarded:
        return dataclasses.replace(row, before=before)
    values = before.body()
    changed = {name: values.get(name) for name, _ in row.change.values}
    guard = Guard.matching({**changed, **row.expected.body()})
    return dataclasses.replace(row, before=before, guard=guard)


async def snapshot_rows(
    path: RequestPath,
    control: RunControl,
    rows: ObjectReceiveStream[list[RowRequest]],
    to_send: ObjectSendStream[list[RowRequest]],
    results: ObjectSendStream[list[RowResult]],
    *,
    concurrency: int,
    guarded: bool,
    plan_only: bool,
    api_sets: frozenset[str] = frozenset(),
) -> None:
    """Read rows' current values a page at a time, with `concurrency` reads in flight.

    `api_sets`: fields an earlier session saw the API set without being asked (see
    `outcomes.updated`)."""
    send_pages, receive_pages = anyio.create_memory_object_stream[list[RowRequest]](concurrency)

    async def split() -> None:
        async with send_pages, rows:
            async for chunk in rows:
                for start in range(0, len(chunk), PAGE_SIZE):
                    await send_pages.send(chunk[start : start + PAGE_SIZE])

    async def read(pages: ObjectReceiveStream[list[RowRequest]]) -> None:
        async with pages:
            async for page in pages:
                checked, sendable = await _read_page(path, control, page, guarded, api_sets)
                if plan_only:
                    checked += [
                        RowResult(
                            row.row,
                            row.conversation_id,
                            Outcome.PLANNED,
                            change=row.change,
                            before=row.before.body() if row.before else None,
                        )
                        for row in sendable
                    ]
                    sendable = []
                if checked:
                    await results.send(checked)
                if sendable:
                    await to_send.send(sendable)

    async with to_send, results, anyio.create_task_group() as readers:
        readers.start_soon(split)
        for _ in range(concurrency):
            readers.start_soon(read, receive_pages.clone())
        receive_pages.close()


def guard_expected(row: RowRequest, guarded: bool) -> RowRequest:
    """Without a snapshot, an input's expect_* values still guard its PATCH."""
    if not guarded or not row.expected:
        return row
    return dataclasses.replace(row, guard=Guard.matching(row.expected.body()))


async def _read_page(
    path: RequestPath,
    control: RunControl,
    page: list[RowRequest],
    guarded: bool,
    api_sets: frozenset[str] = frozenset(),
) -> tuple[list[RowResult], list[RowRequest]]:
    if control.stopping:
        return skipped(page), []
    try:
        current = await path.read_rows(ConversationIds(row.conversation_id for row in page))
    except RunStopped as error:
        control.stop(error)
        return skipped(page), []
    except RemoteError as error:
        # Without the values the row cannot be guarded, skipped if unchanged, or undone:
        # it is not sent (`--no-snapshot` is the way to give that up).
        return row_results(
            page,
            Outcome.FAILED,
            http_status=error.http_status,
            error_code=error.code,
            error_message=f"reading the current values failed: {error}",
        ), []
    checked: list[RowResult] = []
    sendable: list[RowRequest] = []
    for row in page:
        decided = decide(row, current.get(row.conversation_id), guarded=guarded, api_sets=api_sets)
        if isinstance(decided, RowResult):
            checked.append(decided)
        else:
            sendable.append(decided)
    return checked, sendable
