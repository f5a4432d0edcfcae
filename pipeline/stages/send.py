"""The send stage: one group of rows → one PATCH (retried, paced) → one result per row.

Before a PATCH leaves, its rows are recorded as intents (`write_ahead`): a row whose answer is
lost, or whose process dies, is still known to have been sent, with its before-values. What
became of each row is decided by `outcomes`, from evidence, whatever the shape of the answer.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from pipeline.api.client import Answer, returned_values
from pipeline.api.request_path import RequestPath, check_named
from pipeline.core.errors import (
    PermanentError,
    RemoteError,
    RunStopped,
    SafetyError,
    TransientError,
)
from pipeline.core.models import NO_GUARD, ConversationIds, Guard, Outcome, RowRequest, RowResult
from pipeline.stages.grouping import Group, Grouper
from pipeline.stages.outcomes import judge_unnamed, skipped, unconfirmed, updated

#: Write-ahead: make a group's rows durable as sent, before the PATCH leaves.
WriteAhead = Callable[[Sequence[RowRequest]], None]


def row_results(rows: Iterable[RowRequest], outcome: Outcome, **details: Any) -> list[RowResult]:
    return [
        RowResult(row.row, row.conversation_id, outcome, change=row.change, **details)
        for row in rows
    ]


class Sender:
    """Sends groups through the request path and decides what became of each row."""

    def __init__(
        self,
        path: RequestPath,
        grouper: Grouper,
        *,
        guard: Guard = NO_GUARD,
        write_ahead: WriteAhead | None = None,
    ) -> None:
        self._path = path
        self._control = path.control
        self._grouper = grouper
        #: Filters every PATCH of the run carries (a job's query), on top of each row's own.
        self._guard = guard
        self._write_ahead = write_ahead
        self._one_row_per_request = False

    async def send(self, group: Group, *, may_split: bool = True) -> list[RowResult]:
        """PATCH one group (retried, paced, budgeted) and say what became of each of its rows."""
        if self._one_row_per_request and len(group) > 1:
            return await self._send_parts(group.split(1))
        attempts = 0
        maybe_applied = any(row.maybe_applied for row in group.rows)
        guard = group.guard + self._guard

        async def patch() -> Answer:
            nonlocal attempts, maybe_applied
            attempts += 1
            if attempts == 1 and self._write_ahead is not None:
                # Paced and budgeted already: the next thing that happens is the send.
                self._write_ahead(group.rows)
            try:
                return await self._path.client.patch(group.ids, group.change, guard)
            except TransientError as error:
                maybe_applied = maybe_applied or error.may_have_applied
                raise

        try:
            answer = await self._path.call(patch)
        except (RunStopped, SafetyError) as error:
            self._control.stop(error)
            return unconfirmed(
                group.rows,
                Outcome.SKIPPED,
                maybe_applied=maybe_applied,
                attempts=attempts,
                http_status=getattr(error, "http_status", None),
                error_message=str(error),
            )
        except PermanentError as error:
            return await self._refused(group, error, attempts, maybe_applied, may_split)
        except TransientError as error:
            return unconfirmed(
                group.rows,
                Outcome.FAILED,
                maybe_applied=maybe_applied,
                attempts=attempts,
                http_status=error.http_status,
                error_code=error.code,
                error_message=str(error),
            )
        return await self._judge(group, answer, attempts, maybe_applied)

    async def _judge(
        self, group: Group, answer: Answer, attempts: int, maybe_applied: bool
    ) -> list[RowResult]:
        """Each row's outcome: named rows changed; every other row is read, then judged."""
        rows = answer.rows
        if rows is None and answer.content_range_count == 0:
            rows = []  # no body, but the server counted no row changed
        requested = set(group.ids.ids)
        named = check_named(rows if rows is not None else answer.named, requested, self._control)
        if rows is None:
            named = {}  # an incomplete answer (one object for several ids) is not evidence
        results: dict[int, RowResult] = {
            request.row: updated(
                request,
                returned_values(named[request.conversation_id]),
                http_status=answer.http_status,
                attempts=attempts,
            )
            for request in group.rows
            if request.conversation_id in named
        }
        unnamed = [request for request in group.rows if request.row not in results]
        if unnamed:
            try:
                current = await self._path.read_rows(
                    ConversationIds(request.conversation_id for request in unnamed)
                )
            except RunStopped as error:
                self._control.stop(error)
                return list(results.values()) + unconfirmed(
                    unnamed,
                    Outcome.SKIPPED,
                    maybe_applied=True,
                    attempts=attempts,
                    http_status=answer.http_status,
                    error_message=f"the PATCH was answered {answer.http_status}; the run "
                    "stopped before the rows could be read back",
                )
            except RemoteError as error:
                return list(results.values()) + unconfirmed(
                    unnamed,
                    Outcome.FAILED,
                    maybe_applied=True,
                    attempts=attempts,
                    http_status=answer.http_status,
                    error_message=f"the PATCH was answered {answer.http_status}, and reading "
                    f"the rows back failed: {error}",
                )
            guarded = bool(group.guard + self._guard)
            for request in unnamed:
                results[request.row] = judge_unnamed(
                    request,
                    current.get(request.conversation_id),
                    answer_lists_rows=rows is not None,
                    guarded=guarded,
                    maybe_applied=maybe_applied,
                    http_status=answer.http_status,
                    attempts=attempts,
                )
        return [results[request.row] for request in group.rows]

    async def _refused(
        self,
        group: Group,
        error: PermanentError,
        attempts: int,
        maybe_applied: bool,
        may_split: bool,
    ) -> list[RowResult]:
        """A 4xx: this attempt changed nothing. Split, degrade, or report the rows refused."""
        if maybe_applied:
            # An earlier attempt may have landed: the parts must know it, or a part that finds
            # its row already at the target would call it unchanged.
            group = dataclasses.replace(
                group,
                rows=tuple(dataclasses.replace(row, maybe_applied=True) for row in group.rows),
            )
        if len(group) > 1 and error.http_status == 414:
            # The URL was too long for a proxy: halve the group, and the batch size with it.
            self._grouper.batch_size = max(1, min(self._grouper.batch_size, len(group) // 2))
            self._control.notice(
                f"the API refused a URL as too long (414): batch size lowered to "
                f"{self._grouper.batch_size}"
            )
            return await self._send_parts(group.split(max(1, len(group) // 2)))
        if len(group) > 1 and (
            error.http_status == 406 or (error.http_status == 400 and error.code == "PGRST100")
        ):
            # 406: the proxy forces a single-object answer, so a multi-row PATCH is refused
            # and rolled back. 400 PGRST100: it refuses `in.` filters. Either way nothing was
            # changed; from now on, one row per request.
            self._one_row_per_request = True
            self._grouper.batch_size = 1
            self._control.notice(
                f"the API refused a grouped PATCH ({error.http_status}"
                f"{' ' + error.code if error.code else ''}): sending one row per request"
            )
            return await self._send_parts(group.split(1))
        if maybe_applied:
            # This attempt changed nothing, but an earlier one may have: what the rows hold
            # now decides, as for a PATCH that matched nothing.
            return await self._judge(group, Answer(error.http_status or 400, []), attempts, True)
        if len(group) == 1 and error.http_status == 406:
            # A forced single object for one id: 406 says the PATCH matched no row (missing,
            # or no longer matching its guard) and rolled back. Only a read can tell which.
            return await self._judge(group, Answer(406, []), attempts, False)
        if may_split and len(group) > 1 and _row_specific(error):
            # A constraint (409, 23xxx) may be one row's own: try the group once more as two
            # halves, so that one refused row does not take the others down. At most three
            # requests for the group, even when every row is refused.
            return await self._send_parts(group.split(-(-len(group) // 2)), may_split=False)
        return row_results(
            group.rows,
            Outcome.REJECTED,
            attempts=attempts,
            http_status=error.http_status,
            error_code=error.code,
            error_message=str(error),
        )

    async def _send_parts(self, parts: list[Group], *, may_split: bool = True) -> list[RowResult]:
        results: list[RowResult] = []
        for part in parts:
            if self._control.stopping:
                results += skipped(part.rows)
            else:
                results += await self.send(part, may_split=may_split)
        return results


def _row_specific(error: PermanentError) -> bool:
    return error.http_status == 409 or (
        error.http_status == 400 and (error.code or "").startswith("23")
    )
