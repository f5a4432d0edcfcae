"""The send stage: one group of rows → one PATCH (retried, paced) → one result per row."""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio

from pipeline.client import Answer, MateoClient, returned_id, returned_values
from pipeline.errors import (
    MateoBulkError,
    PermanentError,
    RemoteError,
    RunStopped,
    SafetyError,
    TransientError,
)
from pipeline.grouping import Group, Grouper
from pipeline.models import (
    NO_GUARD,
    ConversationIds,
    Guard,
    Outcome,
    RowRequest,
    RowResult,
    same_value,
)
from pipeline.pacer import Pacer
from pipeline.quota import QuotaExhausted, QuotaLedger
from pipeline.retry import MAX_BACKOFF_SECONDS, retrying

#: How long every worker pauses after a 429 that named no wait: the rate-limit window.
_DEFAULT_429_HOLD_SECONDS = 1.0
#: No API day is longer: a Retry-After beyond it stops the run even with --wait.
_LONGEST_DAY_SECONDS = 25 * 3600.0
#: The API's page size: a read-back GET names at most this many ids.
_READ_PAGE = 50


@dataclass
class RunControl:
    """What every worker checks before taking more work: has the run been told to stop?"""

    stop_reason: MateoBulkError | None = None
    requests: int = 0
    retries: int = 0
    notices: list[str] = field(default_factory=list)
    #: A second signal asked to stop at once: in-flight work was cancelled.
    aborted: bool = False

    @property
    def stopping(self) -> bool:
        return self.stop_reason is not None

    def stop(self, reason: MateoBulkError) -> None:
        """Ask every worker to stop taking work; in-flight requests finish."""
        # The first reason wins: an auth error followed by the interrupt it provoked is still
        # an auth error.
        if self.stop_reason is None:
            self.stop_reason = reason

    def notice(self, message: str) -> None:
        if message not in self.notices:
            self.notices.append(message)


def row_results(rows: Iterable[RowRequest], outcome: Outcome, **details: Any) -> list[RowResult]:
    return [
        RowResult(row.row, row.conversation_id, outcome, change=row.change, **details)
        for row in rows
    ]


class Sender:
    """Sends groups with retries under the shared pacer and turns each answer into results."""

    def __init__(
        self,
        client: MateoClient,
        pacer: Pacer,
        control: RunControl,
        grouper: Grouper,
        *,
        max_attempts: int,
        ledger: QuotaLedger | None = None,
        max_wait: float = 60.0,
        wait_for_reset: bool = False,
        guard: Guard = NO_GUARD,
    ) -> None:
        self._client = client
        self._pacer = pacer
        self._control = control
        self._grouper = grouper
        self._max_attempts = max_attempts
        self._ledger = ledger
        self._max_wait = max_wait
        self._wait_for_reset = wait_for_reset
        #: Filters every PATCH of the run carries (a job's query), on top of each row's own.
        self._guard = guard
        self._one_row_per_request = False

    async def send(self, group: Group) -> list[RowResult]:
        """PATCH one group (retried, paced, budgeted) and say what became of each of its rows."""
        if self._one_row_per_request and len(group) > 1:
            return await self._send_parts(group.split(1))
        attempts = 0

        async def patch() -> Answer:
            nonlocal attempts
            attempts += 1
            guard = group.guard + self._guard
            return await self._request(lambda: self._client.patch(group.ids, group.change, guard))

        try:
            answer = await self._retried(patch)
        except RunStopped as error:
            self._control.stop(error)
            return row_results(
                group.rows,
                Outcome.SKIPPED,
                http_status=getattr(error, "http_status", None),
                attempts=attempts,
                error_message=str(error),
            )
        except PermanentError as error:
            return await self._refused(group, error, attempts)
        except TransientError as error:
            return row_results(group.rows, Outcome.FAILED, attempts=attempts, **_details(error))

        rows = answer.rows
        if rows is None:
            # Rows an incomplete answer names are still checked: none may be a stranger.
            self._check_named(group, answer.named)
            # The answer does not say which rows changed: read them back, never assume.
            try:
                rows = await self._read_back(group.ids)
            except RunStopped as error:
                self._control.stop(error)
                rows = None
            except RemoteError as error:
                message = (
                    f"the PATCH was answered {answer.http_status} with no rows, and "
                    f"reading them back failed: {error}"
                )
                return row_results(
                    group.rows,
                    Outcome.FAILED,
                    http_status=answer.http_status,
                    attempts=attempts,
                    error_code=error.code,
                    error_message=message,
                )
            if rows is None:
                return row_results(
                    group.rows,
                    Outcome.SKIPPED,
                    http_status=answer.http_status,
                    attempts=attempts,
                    error_message="the run stopped before the read-back",
                )
        results = self._classify(group, rows, answer.http_status, attempts)
        if group.guard or self._guard:
            results = await self._find_conflicts(results)
        return results

    async def _find_conflicts(self, results: list[RowResult]) -> list[RowResult]:
        """A guarded row the PATCH did not match exists but changed: read it once, `conflict`."""
        missing = [result for result in results if result.outcome is Outcome.NOT_FOUND]
        if not missing or self._control.stopping:
            return results
        try:
            rows = await self._read_back(ConversationIds(r.conversation_id for r in missing))
        except RemoteError as error:
            # Missing or changed by someone else: without the read there is no telling.
            unknown = {
                result.row: dataclasses.replace(
                    result,
                    outcome=Outcome.FAILED,
                    error_message="the guarded PATCH did not match it, and reading it back "
                    f"failed: {error}",
                )
                for result in missing
            }
            return [unknown.get(result.row, result) for result in results]
        current = self._check_named_rows(rows or [], {r.conversation_id for r in missing})
        replaced = {}
        for result in missing:
            row = current.get(result.conversation_id)
            if row is None:
                continue
            values = returned_values(row)
            if all(same_value(values.get(name), target) for name, target in result.change.values):
                # Our own earlier attempt landed (applied, then the answer was lost): the guard
                # no longer matches because the row already holds the target.
                replaced[result.row] = dataclasses.replace(
                    result, outcome=Outcome.UPDATED, returned=values
                )
            else:
                replaced[result.row] = dataclasses.replace(
                    result,
                    outcome=Outcome.CONFLICT,
                    returned=values,
                    error_message="changed since it was read (it no longer matches the guard); "
                    "left alone",
                )
        return [replaced.get(result.row, result) for result in results]

    async def _request(self, call: Callable[[], Awaitable[Answer]]) -> Answer:
        """One request: paced, counted against the day's budget, told apart from a long wait."""
        while True:
            await self._pacer.wait()
            if self._control.stopping:
                # Workers queued at the pacer when the run was told to stop send nothing more.
                raise RunStopped("the run is stopping")
            await self._take_budget()
            self._control.requests += 1
            try:
                answer = await call()
            except TransientError as error:
                wait = error.retry_after
                if error.http_status != 429 or wait is None or wait <= self._max_wait:
                    raise
                # Minutes or hours to wait: that is a spent daily limit, not a busy second.
                if not self._wait_for_reset or wait > _LONGEST_DAY_SECONDS:
                    # --wait sleeps through a daily reset, never through a hostile "a year".
                    raise QuotaExhausted(
                        f"the API asked to wait {wait:,.0f} s (more than --max-wait "
                        f"{self._max_wait:g} s): its daily limit is likely spent; resume after "
                        f"{_clock_after(wait)}"
                    ) from None
                self._control.notice(f"waiting {wait:,.0f} s for the API's limit to reset (--wait)")
                self._pacer.hold(wait)
                continue
            self._pacer.succeeded()
            if answer.ratelimit_remaining is not None and answer.ratelimit_remaining <= 0:
                self._window_spent(answer.ratelimit_reset or 1.0)
            return answer

    def _window_spent(self, reset: float) -> None:
        """`ratelimit-remaining: 0`: wait for the window to reset instead of meeting a 429."""
        if reset <= self._max_wait or self._wait_for_reset:
            self._pacer.hold(reset)
            return
        # A window of hours is the daily limit: stop cleanly now rather than be refused.
        self._control.stop(
            QuotaExhausted(
                f"the API's limit is spent for {reset:,.0f} s (more than --max-wait "
                f"{self._max_wait:g} s); resume after {_clock_after(reset)}"
            )
        )

    async def _take_budget(self) -> None:
        if self._ledger is None:
            return
        while True:
            try:
                self._ledger.take()
                return
            except QuotaExhausted as error:
                if not self._wait_for_reset or error.resets_at is None:
                    raise
                seconds = (error.resets_at - datetime.now(UTC)).total_seconds()
                self._control.notice(
                    f"waiting for the daily budget to reset at {error.resets_at:%H:%M} UTC (--wait)"
                )
                await anyio.sleep(max(1.0, seconds))

    async def _retried(self, call: Callable[[], Any]) -> Any:
        async for attempt in retrying(self._max_attempts, on_retry=self._on_retry):
            with attempt:
                return await call()
        raise AssertionError("unreachable: retrying re-raises the last error")

    def _on_retry(self, error: TransientError) -> None:
        self._control.retries += 1
        retry_after = (
            None if error.retry_after is None else min(error.retry_after, MAX_BACKOFF_SECONDS)
        )
        if error.http_status == 429:
            self._pacer.slow_down(retry_after, _DEFAULT_429_HOLD_SECONDS)
        elif retry_after is not None:
            self._pacer.hold(retry_after)

    async def _refused(self, group: Group, error: PermanentError, attempts: int) -> list[RowResult]:
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
        if len(group) == 1 and error.http_status == 406:
            # A single-object answer for a single id fails with 406 when no row matched.
            return row_results(group.rows, Outcome.NOT_FOUND, attempts=attempts, **_details(error))
        return row_results(group.rows, Outcome.REJECTED, attempts=attempts, **_details(error))

    async def _send_parts(self, parts: list[Group]) -> list[RowResult]:
        results: list[RowResult] = []
        for part in parts:
            if self._control.stopping:
                results += row_results(part.rows, Outcome.SKIPPED)
            else:
                results += await self.send(part)
        return results

    async def read_current(self, ids: ConversationIds) -> dict[str, dict[str, Any]] | None:
        """The current rows of `ids` by id (paced, budgeted, retried); None if stopping."""
        rows = await self._read_back(ids)
        if rows is None:
            return None
        return self._check_named_rows(rows, set(ids.ids))

    async def _read_back(self, ids: ConversationIds) -> list[dict[str, Any]] | None:
        rows: list[dict[str, Any]] = []
        for start in range(0, len(ids), _READ_PAGE):
            if self._control.stopping:
                return None
            page = ConversationIds(ids.ids[start : start + _READ_PAGE])

            async def read(page: ConversationIds = page) -> Answer:
                return await self._request(lambda: self._client.read(page))

            answer = await self._retried(read)
            rows += answer.rows or []
        return rows

    def _check_named(
        self, group: Group, rows: Iterable[dict[str, Any]]
    ) -> dict[str, dict[str, Any]]:
        return self._check_named_rows(rows, set(group.ids.ids))

    def _check_named_rows(
        self, rows: Iterable[dict[str, Any]], requested: set[str]
    ) -> dict[str, dict[str, Any]]:
        """The named rows by id; any row we did not ask for stops the run (SafetyError)."""
        returned: dict[str, dict[str, Any]] = {}
        unexpected: set[str] = set()
        for answered in rows:
            row_id = returned_id(answered)
            if row_id is None or row_id not in requested:
                unexpected.add(str(answered.get("id")))
            else:
                returned[row_id] = answered
        if unexpected:
            self._control.stop(
                SafetyError(
                    f"the API answered for {len(unexpected)} conversation(s) that were not in "
                    f"the request (e.g. {sorted(unexpected)[0]}); the run was stopped. Check "
                    "the report and the account before running again",
                    unexpected_ids=frozenset(unexpected),
                )
            )
        return returned

    def _classify(
        self, group: Group, rows: list[dict[str, Any]], http_status: int, attempts: int
    ) -> list[RowResult]:
        returned = self._check_named(group, rows)
        results = []
        for request in group.rows:
            row = returned.get(request.conversation_id)
            if row is None:
                results.append(
                    RowResult(
                        request.row,
                        request.conversation_id,
                        Outcome.NOT_FOUND,
                        change=request.change,
                        http_status=http_status,
                        attempts=attempts,
                    )
                )
                continue
            values = returned_values(row)
            results.append(
                RowResult(
                    request.row,
                    request.conversation_id,
                    Outcome.UPDATED,
                    change=request.change,
                    http_status=http_status,
                    attempts=attempts,
                    returned=values,
                    difference=_difference(request, values),
                    before=_before(request),
                )
            )
        return results


def _before(request: RowRequest) -> dict[str, str | None] | None:
    """The row's values before this change: read by the snapshot, or expected by the input."""
    if request.before is not None:
        return request.before.body()
    expected = request.expected.body()
    if expected and all(name in expected for name, _ in request.change.values):
        return expected
    return None


def _clock_after(seconds: float) -> str:
    return f"{datetime.now(UTC) + timedelta(seconds=seconds):%Y-%m-%d %H:%M} UTC"


def _difference(request: RowRequest, returned: dict[str, str | None]) -> str | None:
    """The fields whose returned value is not the target, e.g. "status: closed -> open"."""
    differences = []
    for name, target in request.change.values:
        if name not in returned:
            differences.append(f"{name}: not returned")
        elif not same_value(returned[name], target):
            differences.append(f"{name}: {_cell(target)} -> {_cell(returned[name])}")
    return "; ".join(differences) or None


def _cell(value: str | None) -> str:
    return "null" if value is None else value


def _details(error: RemoteError) -> dict[str, Any]:
    return {
        "http_status": error.http_status,
        "error_code": error.code,
        "error_message": str(error),
    }
