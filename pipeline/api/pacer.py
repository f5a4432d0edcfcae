"""The shared request pacer: one place decides when the next request may start."""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable

import anyio

#: Requests are spaced this much wider than 1/rate, so that network jitter between our clock and
#: the gateway's never makes two requests look closer than the limit allows.
_SPACING_MARGIN = 1.01
#: After a 429 the rate never drops below this (one request every 10 s).
_MIN_RATE = 0.1
#: Requests per second regained per successful request after a slow-down.
_RATE_STEP = 0.05
#: Past this, an unlimited pacer that was slowed down is unlimited again.
_UNLIMITED_AGAIN = 1_000.0


class Pacer:
    """Spaces request starts at most `rate` per second, from the very first request on.

    Token-bucket limiters let a burst of `concurrency` requests through at start-up, which at
    Mateo's 2 requests/s is an instant 429. Here each start is at least one interval after the
    previous *actual* start. A 429 (`slow_down`) holds every worker for the server's Retry-After
    and halves the rate; each success (`succeeded`) gives a little back, up to the ceiling set by
    the user (additive increase, multiplicative decrease). Time comes from anyio, so tests can
    run it on a virtual clock.
    """

    def __init__(
        self, rate: float | None, *, sleep: Callable[[float], Awaitable[None]] = anyio.sleep
    ) -> None:
        #: How the pacer waits: a run passes a sleep that a stop interrupts at once.
        self._sleep = sleep
        self.ceiling = rate
        self.rate = rate
        self._last_start = -float("inf")
        self._resume_at = -float("inf")
        self._last_decrease = -float("inf")
        self._recent_starts: deque[float] = deque(maxlen=256)
        self._lock = anyio.Lock()
        self.started = 0

    async def wait(self) -> None:
        """Return when the caller may start its request."""
        if self.rate is None and anyio.current_time() >= self._resume_at:
            self._started(anyio.current_time())
            return
        # The lock queues callers fairly; each one sleeps until its own start is due, and wakes to
        # re-check because a hold or a slow-down may have arrived while it slept.
        async with self._lock:
            while True:
                now = anyio.current_time()
                interval = _SPACING_MARGIN / self.rate if self.rate else 0.0
                ready_at = max(self._last_start + interval, self._resume_at)
                if now >= ready_at:
                    break
                await self._sleep(ready_at - now)
            self._started(now)

    def _started(self, now: float) -> None:
        self._last_start = now
        self._recent_starts.append(now)
        self.started += 1

    def hold(self, seconds: float) -> None:
        """Start no request for `seconds` from now (the server asked us to wait)."""
        self._resume_at = max(self._resume_at, anyio.current_time() + seconds)

    def slow_down(self, retry_after: float | None, default_hold: float = 1.0) -> None:
        """The server refused a request as too many (429): wait, then go slower."""
        now = anyio.current_time()
        self.hold(default_hold if retry_after is None else retry_after)
        # Requests already in flight when the limit was hit come back as 429s too: they are
        # one signal, so the rate is halved at most once per second.
        if now - self._last_decrease < 1.0:
            return
        self._last_decrease = now
        recent = sum(1 for start in self._recent_starts if now - start <= 1.0)
        current = self.rate if self.rate is not None else float(max(recent, 1))
        self.rate = max(_MIN_RATE, min(current, max(recent, 1)) / 2)

    def succeeded(self) -> None:
        """A request went through: climb back toward the ceiling."""
        if self.rate is None or self.rate == self.ceiling:
            return
        self.rate += _RATE_STEP
        if self.ceiling is not None:
            self.rate = min(self.rate, self.ceiling)
        elif self.rate >= _UNLIMITED_AGAIN:
            self.rate = None
