"""The gateway's limits: a token bucket for the request rate and a daily request quota.

Both read one monotonic clock, the server's, so a client that paces itself at exactly the rate is
never refused; the bucket forgives a few milliseconds of network and scheduling jitter.
"""

from __future__ import annotations

import math

DAY_SECONDS = 86400.0
#: Arrival jitter forgiven: a request this much early still finds its token.
JITTER_SECONDS = 0.02


class TokenBucket:
    """`rate` tokens a second into a bucket of `burst`; a request takes one or is refused."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._updated = now
        self._tolerance = min(JITTER_SECONDS * rate, 0.5)

    def _refill(self, now: float) -> None:
        if now > self._updated:
            self._tokens = min(float(self.burst), self._tokens + (now - self._updated) * self.rate)
            self._updated = now

    def take(self, now: float) -> float | None:
        """Take a token; None when allowed, else the seconds until one is available."""
        self._refill(now)
        if self._tokens >= 1.0 - self._tolerance:
            self._tokens -= 1.0
            return None
        return (1.0 - self._tolerance - self._tokens) / self.rate

    def remaining(self, now: float) -> int:
        self._refill(now)
        return max(0, math.floor(self._tokens + self._tolerance))

    def seconds_until_full(self, now: float) -> float:
        self._refill(now)
        return max(0.0, (self.burst - self._tokens) / self.rate)


class DailyQuota:
    """Requests per day; every request counts, refused ones included, as a gateway counts."""

    def __init__(self, limit: int | None, now: float) -> None:
        self.limit = limit
        self.used = 0
        self._day_started = now

    def _roll(self, now: float) -> None:
        if now - self._day_started >= DAY_SECONDS:
            days = math.floor((now - self._day_started) / DAY_SECONDS)
            self._day_started += days * DAY_SECONDS
            self.used = 0

    def count(self, now: float) -> float | None:
        """Count one request; None when within the quota, else the seconds until the next day."""
        self._roll(now)
        self.used += 1
        if self.limit is not None and self.used > self.limit:
            return self.seconds_until_reset(now)
        return None

    def remaining(self, now: float) -> int:
        self._roll(now)
        return max(0, (self.limit or 0) - self.used)

    def seconds_until_reset(self, now: float) -> float:
        self._roll(now)
        return max(0.0, self._day_started + DAY_SECONDS - now)

    def advance_day(self, now: float) -> None:
        """Start a new day now: the quota is whole again."""
        self._day_started = now
        self.used = 0


def whole_seconds(seconds: float) -> int:
    """Retry-After and ratelimit-reset are whole seconds, rounded up, never 0 for a refusal."""
    return max(1, math.ceil(seconds - 1e-9))
