"""The daily request budget, shared by every run and job of one account on this machine.

Mateo allows 10,000 requests a day per account. Requests are counted in a small SQLite ledger
in the user's state directory, keyed by a fingerprint of the token (never the token), so a
cleanup job and a migration on the same day draw from one budget. A run takes requests from
the ledger a few at a time, so several processes can share it without one commit per request;
what a run took and did not use is given back when it ends (a killed run keeps them: the
ledger errs on the side of counting too many).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

from pipeline.api.account import account_fingerprint, state_dir
from pipeline.core.errors import InputError, RunStopped

DEFAULT_DAILY_QUOTA = 10_000
#: Requests taken from the ledger at a time: one transaction per block, not per request.
_BLOCK = 50

Clock = Callable[[], datetime]


def _utc_now() -> datetime:
    return datetime.now(UTC)


class QuotaExhausted(RunStopped):
    """The day's budget (or this run's --max-requests) is spent; resume after the reset."""

    def __init__(self, message: str, *, resets_at: datetime | None = None) -> None:
        super().__init__(message)
        self.resets_at = resets_at


def parse_reset_time(text: str) -> time:
    """`HH:MM` in UTC, the moment the API's day starts (--quota-reset-utc)."""
    try:
        hours, minutes = (int(part) for part in text.split(":"))
        return time(hours, minutes, tzinfo=UTC)
    except ValueError:
        raise InputError(f"--quota-reset-utc {text!r} must be HH:MM (UTC), e.g. 00:00") from None


@dataclass(frozen=True)
class Budget:
    """Where the day's budget stands."""

    used: int
    limit: int
    resets_at: datetime

    @property
    def left(self) -> int:
        return max(0, self.limit - self.used)


class QuotaLedger:
    """Counts one account's requests per API day and refuses past the budget."""

    def __init__(
        self,
        token: str,
        *,
        daily_quota: int = DEFAULT_DAILY_QUOTA,
        max_requests: int | None = None,
        reset_at: time = time(0, 0, tzinfo=UTC),
        path: Path | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._account = account_fingerprint(token)
        self._daily_quota = daily_quota
        self._max_requests = max_requests
        self._reset_at = reset_at
        self._clock = clock or _utc_now
        self.path = path or state_dir() / "ledger.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._connection = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self._connection.execute("PRAGMA journal_mode=WAL")
        self._connection.execute(
            "CREATE TABLE IF NOT EXISTS used (account TEXT, day TEXT, requests INTEGER NOT NULL,"
            " PRIMARY KEY (account, day))"
        )
        self._held = 0
        self._held_day: str | None = None
        #: Requests this run has sent.
        self.sent = 0

    def _day(self) -> tuple[str, datetime]:
        """The API day now, and when it ends."""
        now = self._clock()
        start = datetime.combine(now.date(), self._reset_at)
        if now < start:
            start -= timedelta(days=1)
        return start.date().isoformat(), start + timedelta(days=1)

    def budget(self) -> Budget:
        day, resets_at = self._day()
        row = self._connection.execute(
            "SELECT requests FROM used WHERE account = ? AND day = ?", (self._account, day)
        ).fetchone()
        used = (row[0] if row else 0) - (self._held if self._held_day == day else 0)
        return Budget(used, self._daily_quota, resets_at)

    def take(self) -> None:
        """Count one request about to be sent, or raise QuotaExhausted."""
        if self._max_requests is not None and self.sent >= self._max_requests:
            raise QuotaExhausted(
                f"this run has sent its --max-requests {self._max_requests:,} requests"
            )
        day, resets_at = self._day()
        if self._held_day != day:
            self._held, self._held_day = 0, day  # a new day: what was held is no longer owed
        if self._held == 0:
            self._held = self._reserve(day, resets_at)
        self._held -= 1
        self.sent += 1

    def refund(self) -> None:
        """Give back the request last taken: it never reached the API (no connection)."""
        if self.sent > 0 and self._held_day is not None:
            self._held += 1
            self.sent -= 1

    def _reserve(self, day: str, resets_at: datetime) -> int:
        with self._connection:
            self._connection.execute("BEGIN IMMEDIATE")
            row = self._connection.execute(
                "SELECT requests FROM used WHERE account = ? AND day = ?", (self._account, day)
            ).fetchone()
            used = row[0] if row else 0
            block = min(_BLOCK, self._daily_quota - used)
            if self._max_requests is not None:
                block = min(block, self._max_requests - self.sent)
            if block <= 0:
                raise QuotaExhausted(
                    f"today's budget of {self._daily_quota:,} requests for this account is "
                    f"spent; it resets at {resets_at:%Y-%m-%d %H:%M} UTC",
                    resets_at=resets_at,
                )
            self._connection.execute(
                "INSERT INTO used VALUES (?, ?, ?) ON CONFLICT (account, day) "
                "DO UPDATE SET requests = requests + excluded.requests",
                (self._account, day, block),
            )
        return block

    def close(self) -> None:
        """Give back what this run took and did not use."""
        if self._held and self._held_day is not None:
            with self._connection:
                self._connection.execute(
                    "UPDATE used SET requests = MAX(0, requests - ?) WHERE account = ? AND day = ?",
                    (self._held, self._account, self._held_day),
                )
            self._held = 0
        self._connection.close()
