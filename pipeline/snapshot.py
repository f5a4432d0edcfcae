"""The snapshot stage: read each row's current values before changing it.

With the values in hand, a row already in its target state costs no PATCH (`unchanged`), a
conversation that does not exist costs none either (`not_found`), and every PATCH carries the
values it was planned from as a guard, so a row someone changed in the meantime matches
nothing and is left alone (`conflict`). The snapshot costs one GET per 50 rows.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import anyio
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from pipeline.client import returned_values
from pipeline.errors import PermanentError, RemoteError, RunStopped
from pipeline.models import (
    Change,
    ConversationIds,
    Guard,
    Outcome,
    RowRequest,
    RowResult,
    same_value,
)
from pipeline.send import RunControl, Sender, row_results

#: Ids per snapshot GET: the API's page size.
PAGE_SIZE = 50


def decide(
    row: RowRequest, current: dict[str, Any] | None, *, guarded: bool
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
    mismatched = [
        name for name, value in row.expected.values if not same_value(values.get(name), value)
    ]
    if mismatched:
        return RowResult(
            row.row,
            row.conversation_id,
            Outcome.CONFLICT,
            change=row.change,
            returned=values,
            error_message=f"{', '.join(mismatched)} no longer hold the expected values; left alone",
        )
    before = Change(tuple((name, values.get(name)) for name, _ in row.change.values))
    if all(same_value(values.get(name), target) for name, target in row.change.values):
        return RowResult(
            row.row,
            row.conversation_id,
            Outcome.UNCHANGED,
            change=row.change,
            returned=values,
            before=before.body(),
        )
    guard = Guard.matching({**before.body(), **row.expected.body()}) if guarded else row.guard
    return dataclasses.replace(row, before=before, guard=guard)


async def snapshot_rows(
    sender: Sender,
    control: RunControl,
    rows: ObjectReceiveStream[list[RowRequest]],
    to_send: ObjectSendStream[list[RowRequest]],
    results: ObjectSendStream[list[RowResult]],
    *,
    concurrency: int,
    guarded: bool,
    plan_only: bool,
) -> None:
    """Read rows' current values a page at a time, with `concurrency` reads in flight."""
    send_pages, receive_pages = anyio.create_memory_object_stream[list[RowRequest]](concurrency)

    async def split() -> None:
        async with send_pages, rows:
            async for chunk in rows:
                for start in range(0, len(chunk), PAGE_SIZE):
                    await send_pages.send(chunk[start : start + PAGE_SIZE])

    refused: list[str] = []  # set once the API refuses multi-row reads

    async def read(pages: ObjectReceiveStream[list[RowRequest]]) -> None:
        async with pages:
            async for page in pages:
                checked: list[RowResult] = []
                if refused:
                    sendable = [guard_expected(row, guarded) for row in page]
                else:
                    checked, sendable = await _read_page(sender, control, page, guarded, refused)
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
    sender: Sender,
    control: RunControl,
    page: list[RowRequest],
    guarded: bool,
    refused: list[str],
) -> tuple[list[RowResult], list[RowRequest]]:
    if control.stopping:
        return row_results(page, Outcome.SKIPPED), []
    try:
        current = await sender.read_current(ConversationIds(row.conversation_id for row in page))
    except RunStopped as error:
        control.stop(error)
        current = None
    except PermanentError as error:
        if len(page) > 1 and _refuses_many(error):
            # Reading one row per request would double the run's cost: go on without the
            # snapshot (no unchanged-skipping, no snapshot guard) and say so once.
            refused.append(str(error))
            control.notice(
                f"the API refuses reads of several rows ({error.http_status}): continuing "
                "without the snapshot"
            )
            return [], [guard_expected(row, guarded) for row in page]
        return _failed_read(page, error), []
    except RemoteError as error:
        return row_results(
            page,
            Outcome.FAILED,
            http_status=error.http_status,
            error_code=error.code,
            error_message=f"reading the current values failed: {error}",
        ), []
    if current is None:
        return row_results(page, Outcome.SKIPPED), []
    checked: list[RowResult] = []
    sendable: list[RowRequest] = []
    for row in page:
        decided = decide(row, current.get(row.conversation_id), guarded=guarded)
        if isinstance(decided, RowResult):
            checked.append(decided)
        else:
            sendable.append(decided)
    return checked, sendable


def _refuses_many(error: PermanentError) -> bool:
    return error.http_status in (406, 414) or (
        error.http_status == 400 and error.code == "PGRST100"
    )


def _failed_read(page: list[RowRequest], error: RemoteError) -> list[RowResult]:
    return row_results(
        page,
        Outcome.FAILED,
        http_status=error.http_status,
        error_code=error.code,
        error_message=f"reading the current values failed: {error}",
    )
