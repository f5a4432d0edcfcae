"""The one request path: every request of a run, a job's query and doctor leaves through here.

Paced (the shared `Pacer`), counted against the day's budget (`QuotaLedger`), retried on
transient errors (`retrying`), aware of every rate-limit header, and stopped at once when the
run is told to stop: no wait of any kind (pacer, backoff, Retry-After, `--wait`) outlives a stop.
Reads page here too, so that no caller can mistake a short page for "the rest does not exist".
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Protocol, TypeVar

import anyio

from pipeline.api.client import MateoClient, returned_id
from pipeline.api.pacer import Pacer
from pipeline.api.quota import QuotaExhausted, QuotaLedger
from pipeline.api.retry import MAX_BACKOFF_SECONDS, retrying
from pipeline.core.errors import (
    EndpointError,
    MateoBulkError,
    PermanentError,
    RunStopped,
    SafetyError,
    TransientError,
)
from pipeline.core.models import ConversationIds, normalise_uuid

#: How long every worker pauses after a 429 that named no wait: the rate-limit window.
_DEFAULT_429_HOLD_SECONDS = 1.0
#: No API day is longer: a Retry-After beyond it stops the run even with --wait.
_LONGEST_DAY_SECONDS = 25 * 3600.0
#: The API's page size: a GET returns at most this many rows (a proxy may return fewer).
PAGE_SIZE = 50
#: Requests in a row that reached no API (refused, DNS) before the run stops: the base URL or
#: the network is wrong, and every row would fail the same way.
UNREACHABLE_STOP = 5
#: A wait for the API at least this long is shown as the run's phase ("waiting until …").
LONG_WAIT_SECONDS = 5.0


@dataclass
class RunControl:
    """What every worker checks before taking more work: has the run been told to stop?"""

    stop_reason: MateoBulkError | None = None
    requests: int = 0
    retries: int = 0
    #: Answers 429 (too many requests), retried or not: the run report's timeline shows them.
    rate_limited: int = 0
    notices: list[str] = field(default_factory=list)
    #: A second signal asked to stop at once: in-flight work was cancelled.
    aborted: bool = False
    #: The API answered a request of this session with a success: the token is good.
    token_accepted: bool = False
    #: The end of the run's current long wait (UTC) and why: displays show it as the phase.
    waiting_until: datetime | None = None
    waiting_reason: str | None = None
    _stop_requested: anyio.Event = field(default_factory=anyio.Event, repr=False)

    @property
    def stopping(self) -> bool:
        return self.stop_reason is not None

    def stop(self, reason: MateoBulkError) -> None:
        """Ask every worker to stop taking work; in-flight requests finish, waits end now."""
        # The first reason wins: an auth error followed by the interrupt it provoked is still
        # an auth error.
        if self.stop_reason is None:
            self.stop_reason = reason
        self._stop_requested.set()

    def notice(self, message: str) -> None:
        if message not in self.notices:
            self.notices.append(message)

    def waiting(self, seconds: float, reason: str) -> None:
        """The run waits `seconds` for the API: said when that is long enough to be noticed
        (a 2 requests/s pace waits about a second at every window; that is just sending)."""
        if seconds >= LONG_WAIT_SECONDS:
            self.waiting_until = datetime.now(UTC) + timedelta(seconds=seconds)
            self.waiting_reason = reason

    def wait_ends(self) -> datetime | None:
        """When the run's current long wait ends; None when it is not waiting."""
        until = self.waiting_until
        return until if until is not None and until > datetime.now(UTC) else None

    async def sleep(self, seconds: float) -> None:
        """Sleep, unless the run is told to stop meanwhile: then raise RunStopped at once."""
        if not self.stopping:
            with anyio.move_on_after(seconds):
                await self._stop_requested.wait()
        if self.stopping:
            raise RunStopped("the run is stopping")


def check_named(
    rows: Iterable[dict[str, Any]], requested: set[str], control: RunControl
) -> dict[str, dict[str, Any]]:
    """The rows by id; any row that was not asked for stops the run (SafetyError)."""
    returned: dict[str, dict[str, Any]] = {}
    unexpected: set[str] = set()
    for answered in rows:
        row_id = returned_id(answered)
        if row_id is None or row_id not in requested:
            unexpected.add(str(answered.get("id")))
        else:
            returned[row_id] = answered
    if unexpected:
        control.stop(
            SafetyError(
                f"the API answered for {len(unexpected)} conversation(s) that were not in "
                f"the request (e.g. {sorted(unexpected)[0]}); the run was stopped. Check "
                "the report and the account before running again",
                unexpected_ids=frozenset(unexpected),
            )
        )
    return returned


class RateLimited(Protocol):
    """An answer that may carry `ratelimit-remaining` and `ratelimit-reset`."""

    @property
    def ratelimit_remaining(self) -> int | None: ...
    @property
    def ratelimit_reset(self) -> float | None: ...


AnswerT = TypeVar("AnswerT", bound=RateLimited)


class RequestPath:
    """Sends requests for one run (or query, or doctor) under its pacer, budget and stop.

    `client` is what reads and queries go through; doctor, which looks at raw answers, sends
    its own requests through `call` and passes none.
    """

    def __init__(
        self,
        client: MateoClient | None,
        control: RunControl,
        *,
        rate: float | None,
        max_attempts: int,
        ledger: QuotaLedger | None = None,
        max_wait: float = 60.0,
        wait_for_reset: bool = False,
    ) -> None:
        self._client = client
        self.control = control
        self.pacer = Pacer(rate, sleep=control.sleep)
        self._max_attempts = max_attempts
        self._ledger = ledger
        self._max_wait = max_wait
        self._wait_for_reset = wait_for_reset
        #: Set once the API refuses reads of several ids (406, 414, 400 on `in.`).
        self._read_page_size = PAGE_SIZE
        #: Requests in a row that made no connection (the circuit breaker).
        self._unreached = 0
        #: Until the API has answered once, requests leave one at a time (see `_one_request`).
        self._answered_once = False
        self._first_alone = anyio.Lock()

    @property
    def client(self) -> MateoClient:
        if self._client is None:
            raise TypeError("this request path was made without a client")
        return self._client

    async def call(self, send: Callable[[], Awaitable[AnswerT]]) -> AnswerT:
        """`send` once, paced and budgeted, retried on transient errors.

        Raises RunStopped (the run stops meanwhile, the budget is spent), PermanentError, or
        the last TransientError when every attempt failed.
        """
        async for attempt in retrying(
            self._max_attempts, on_retry=self._on_retry, sleep=self.control.sleep
        ):
            with attempt:
                return await self._one_request(send)
        raise AssertionError("unreachable: retrying re-raises the last error")

    async def _one_request(self, send: Callable[[], Awaitable[AnswerT]]) -> AnswerT:
        """One request: paced, counted against the day's budget, told apart from a long wait.

        The first request of a run is its preflight: until one has had an answer, the others
        wait for it. A wrong host, port, certificate or token then costs one request and one
        clear stop, not a pool of them; and the preflight costs nothing extra, since it is a
        request the run needed anyway.
        """
        if not self._answered_once:
            async with self._first_alone:
                if not self._answered_once:
                    return await self._paced_request(send)
        return await self._paced_request(send)

    async def _paced_request(self, send: Callable[[], Awaitable[AnswerT]]) -> AnswerT:
        while True:
            await self.pacer.wait()
            if self.control.stopping:
                # Workers queued at the pacer when the run was told to stop send nothing more.
                raise RunStopped("the run is stopping")
            await self._take_budget()
            self.control.requests += 1
            try:
                answer = await send()
            except PermanentError:
                self._answered_once = True
                raise
            except TransientError as error:
                if not error.reached_api:
                    self._not_sent(error)
                    raise
                self._answered_once = True
                self._unreached = 0
                if error.http_status == 429:
                    self.control.rate_limited += 1
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
                self.control.notice(f"waiting {wait:,.0f} s for the API's limit to reset (--wait)")
                self.control.waiting(wait, "the API's limit (429 with a long Retry-After, --wait)")
                self.pacer.hold(wait)
                continue
            self._answered_once = True
            self._unreached = 0
            self.pacer.succeeded()
            self.control.token_accepted = True
            if answer.ratelimit_remaining is not None and answer.ratelimit_remaining <= 0:
                self._window_spent(answer.ratelimit_reset or 1.0)
            return answer

    def _not_sent(self, error: TransientError) -> None:
        """A request that made no connection costs nothing; too many in a row stop the run."""
        self.control.requests -= 1
        if self._ledger is not None:
            self._ledger.refund()
        self._unreached += 1
        if self._unreached >= UNREACHABLE_STOP:
            stop = EndpointError(
                f"the API could not be reached {self._unreached} times in a row ({error}); "
                "check --base-url and the network, then resume"
            )
            self.control.stop(stop)
            raise stop from None

    def _window_spent(self, reset: float) -> None:
        """`ratelimit-remaining: 0`: wait for the window to reset instead of meeting a 429."""
        if reset <= self._max_wait or self._wait_for_reset:
            self.control.waiting(reset, "the API's rate-limit window (ratelimit-remaining: 0)")
            self.pacer.hold(min(reset, _LONGEST_DAY_SECONDS))
            return
        # A window of hours is the daily limit: stop cleanly now rather than be refused.
        self.control.stop(
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
                self.control.notice(
                    f"waiting for the daily budget to reset at {error.resets_at:%H:%M} UTC (--wait)"
                )
                self.control.waiting(seconds, "the day's request budget (--wait)")
                await self.control.sleep(max(1.0, seconds))

    def _on_retry(self, error: TransientError) -> None:
        self.control.retries += 1
        retry_after = (
            None if error.retry_after is None else min(error.retry_after, MAX_BACKOFF_SECONDS)
        )
        if error.http_status == 429:
            self.pacer.slow_down(retry_after, _DEFAULT_429_HOLD_SECONDS)
        elif retry_after is not None:
            self.pacer.hold(retry_after)

    # --- reads ---------------------------------------------------------------------------------

    async def read_rows(self, ids: ConversationIds) -> dict[str, dict[str, Any]]:
        """The current rows of `ids` by id; an id missing from the result does not exist.

        Pages are asked for with `count=exact`. A page with fewer rows than ids asked is short
        only if the server says more match (`Content-Range: 0-19/50`) or, when it gives no
        total, until a read of the ids still unanswered comes back empty: a short page is never
        taken for "the rest does not exist". A proxy that refuses reads of several ids (406,
        414, 400 on `in.`) is read one id per request from then on, never left unread.
        Raises RunStopped, PermanentError or TransientError.
        """
        found: dict[str, dict[str, Any]] = {}
        pending = deque(_pages(ids.ids, self._read_page_size))
        while pending:
            if self.control.stopping:
                raise RunStopped("the run is stopping")
            page = pending.popleft()
            ids_asked = ConversationIds(page)
            try:
                answer = await self.call(partial(self.client.read, ids_asked))
            except PermanentError as error:
                if len(page) == 1 and error.http_status == 406:
                    # A forced single object for one id: 406 says zero rows matched it.
                    continue
                if len(page) > 1 and _refuses_many(error):
                    self._read_page_size = max(1, len(page) // 2) if error.http_status == 414 else 1
                    self.control.notice(
                        f"the API refuses reads of {len(page)} ids ({error.http_status}): "
                        f"reading {self._read_page_size} per request from now on"
                    )
                    pending.extendleft(reversed(_pages(page, self._read_page_size)))
                    continue
                raise
            rows = check_named(answer.rows or [], set(page), self.control)
            if len(rows) < len(answer.rows or []):
                raise RunStopped("the API answered for rows that were not asked for")
            found.update(rows)
            unanswered = [each for each in page if each not in rows]
            total = answer.content_range_total
            if not unanswered or not rows or (total is not None and total <= len(rows)):
                # Every id answered; or an empty answer (no id of the page exists); or the
                # server's own count says that was all.
                continue
            pending.appendleft(tuple(unanswered))
        return found

    async def query_pages(self, filters: Mapping[str, str]) -> AsyncIterator[list[dict[str, Any]]]:
        """Every row `filters` select, a page at a time, in id order (keyset on id).

        Keyset paging, not offsets: rows that stop matching while we read (we are about to
        change them) cannot shift a later page and make us skip rows. A page is the last when
        it is empty or the server's total says nothing more matches; a short page alone is not.
        """
        after_id: str | None = None
        while True:
            answer = await self.call(partial(self.client.query, filters, after_id=after_id))
            rows = answer.rows or []
            ids = _keyset_ids(rows, after_id)
            if rows:
                yield rows
            total = answer.content_range_total
            if not rows or (total is not None and total <= len(rows)):
                return
            after_id = ids[-1]


def _pages(ids: tuple[str, ...], size: int) -> list[tuple[str, ...]]:
    return [ids[start : start + size] for start in range(0, len(ids), size)]


def _refuses_many(error: PermanentError) -> bool:
    return error.http_status in (406, 414) or (
        error.http_status == 400 and error.code == "PGRST100"
    )


def _keyset_ids(rows: list[dict[str, Any]], after_id: str | None) -> list[str]:
    """The page's ids, checked to advance the keyset (else paging would never end)."""
    ids = []
    last = after_id
    for row in rows:
        try:
            conversation_id = normalise_uuid(str(row.get("id")))
        except ValueError:
            raise PermanentError(
                f"the query's answer holds a row without a uuid id: {str(row)[:200]}"
            ) from None
        if last is not None and conversation_id <= last:
            raise PermanentError(
                "the query's answer is not in id order after the previous page; "
                "the API ignored order=id.asc, so its pages cannot be read safely"
            )
        ids.append(conversation_id)
        last = conversation_id
    return ids


def _clock_after(seconds: float) -> str:
    return f"{datetime.now(UTC) + timedelta(seconds=seconds):%Y-%m-%d %H:%M} UTC"
