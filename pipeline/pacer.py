"""The shared request pacer: one place decides when the next request may start."""

from __future__ import annotations

import anyio

#: Requests are spaced this much wider than 1/rate, so that network jitter between our clock and
#: the gateway's never makes two requests look closer than the limit allows.
_SPACING_MARGIN = 1.01


class Pacer:
    """Spaces request starts at most `rate` per second, from the very first request on.

    Token-bucket limiters let a burst of `concurrency` requests through at start-up, which at
    Mateo's 2 requests/s is an instant 429. Here each start is at least one interval after the
    previous *actual* start, and `hold()` (fed by Retry-After) pauses every worker, not just the
    one that was told to wait. Time comes from anyio, so tests can run it on a virtual clock.
    """

    def __init__(self, rate: float | None) -> None:
        self._interval = _SPACING_MARGIN / rate if rate else 0.0
        self._last_start = -float("inf")
        self._resume_at = -float("inf")
        self._lock = anyio.Lock()
        self.started = 0

    @property
    def rate(self) -> float | None:
        return _SPACING_MARGIN / self._interval if self._interval else None

    async def wait(self) -> None:
        """Return when the caller may start its request."""
        if not self._interval and anyio.current_time() >= self._resume_at:
            self.started += 1
            return
        # The lock queues callers fairly; each one sleeps until its own start is due, and wakes to
        # re-check because a hold() may have arrived while it slept.
        async with self._lock:
            while True:
                now = anyio.current_time()
                ready_at = max(self._last_start + self._interval, self._resume_at)
                if now >= ready_at:
                    break
                await anyio.sleep(ready_at - now)
            self._last_start = now
            self.started += 1

    def hold(self, seconds: float) -> None:
        """Start no request for `seconds` from now (the server asked us to wait)."""
        self._resume_at = max(self._resume_at, anyio.current_time() + seconds)
