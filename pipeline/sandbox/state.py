"""The sandbox's memory: the conversation table, the limits' counters, stats and the request log.

The server thread writes and a test thread reads, so every access goes through one lock; the
server does its work for one request under the lock without awaiting, so a PATCH is atomic.

The request log (`--request-log`, `running_sandbox(request_log=...)`) is evidence a checker can
read afterwards: one JSON object per line for every request to /api, refused and faulted ones
included, written when the request is answered (so lines are in order of answering; sort by
`arrived` for the order of arrival). Each line has every one of these keys:

- `time`: wall-clock time of the answer, ISO 8601 in UTC.
- `arrived`: the server's monotonic clock on arrival, in seconds (the clock the rate limit and
  the 1-second window use; only differences between entries mean anything).
- `duration_ms`: from arrival to answer, in milliseconds.
- `method`: the HTTP method.
- `path`: the request target: the path as sent and, after `?`, the query string (kept in this
  form so that `urllib.parse.urlsplit(entry["path"])` gives both).
- `query`: the query string exactly as received, still percent-encoded ("" when none).
- `status`: the HTTP status answered; 499 when the client hung up first, and for a dropped
  connection the status that was started before the body broke off.
- `ids_matched`: the ids of the rows a PATCH's filters selected, also when it was then rolled
  back; empty for reads and for PATCHes refused before reaching the table.
- `ids_updated`: the ids of the rows the request changed, in id order: non-empty only when
  `committed` is true. A committed PATCH can still have been answered with an error (a cut-off,
  an injected 503, a dropped connection); these are the rows that changed all the same.
- `committed`: whether a PATCH's UPDATE ran and was kept (true also when it matched no row);
  false for reads and for every PATCH that was refused, rolled back or never carried out.
- `fault`, only when one was injected: its kind (`500`, `drop`, `cutoff`, `reset`, ...).

Nothing of the Authorization header is written, and the token is replaced by `[redacted]` if a
client puts it in the URL: the only way `path` and `query` ever differ from what was received.
"""

from __future__ import annotations

import collections
import json
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from pipeline.sandbox import schema
from pipeline.sandbox.config import SandboxConfig
from pipeline.sandbox.data import Dataset, dataset_from_rows
from pipeline.sandbox.limits import DailyQuota, TokenBucket, whole_seconds
from pipeline.sandbox.query import Query

Row = dict[str, Any]
Header = tuple[bytes, bytes]


class Refusal:
    """Why the gateway refused a request before it reached the API, and when to come back."""

    __slots__ = ("reason", "retry_after")

    def __init__(self, reason: str, retry_after: int) -> None:
        self.reason = reason
        self.retry_after = retry_after


class SandboxState:
    """The in-memory table plus everything the sandbox counts."""

    def __init__(
        self,
        dataset: Dataset | Iterable[Mapping[str, Any]],
        *,
        clock: Callable[[], float] = time.monotonic,
        request_log: str | Path | None = None,
    ) -> None:
        if not isinstance(dataset, Dataset):
            dataset = dataset_from_rows(dataset)
        self.lock = threading.RLock()
        self.clock = clock
        self.dataset = dataset
        self.inbox_ids = dataset.inbox_ids
        self.agent_ids = dataset.agent_ids
        self._rows: dict[str, Row] = {}
        self._ordered_ids: list[str] = []
        self._bucket: TokenBucket | None = None
        self._quota = DailyQuota(None, clock())
        self._limit_settings: tuple[float | None, int, int | None] | None = None
        self._log: IO[str] | None = None
        self._redact: re.Pattern[str] | None = None
        self.load_rows(dataset.rows)
        self._in_flight = 0
        self.reset_stats()
        if request_log is not None:
            self.open_request_log(request_log)

    # --- rows ------------------------------------------------------------------------------

    def load_rows(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Replace the table's contents (copies are kept, the caller's rows are not changed)."""
        copies = {str(row["id"]): _copy_row(row) for row in rows}
        with self.lock:
            self._rows = copies
            self._ordered_ids = sorted(copies)

    def reset_rows(self) -> None:
        """Put back the rows the sandbox started with."""
        self.load_rows(self.dataset.rows)

    def rows(self) -> list[Row]:
        """A copy of every row, ordered by id."""
        with self.lock:
            return [_copy_row(self._rows[row_id]) for row_id in self._ordered_ids]

    def row(self, row_id: str) -> Row | None:
        with self.lock:
            found = self._rows.get(row_id)
            return None if found is None else _copy_row(found)

    def match(self, query: Query) -> list[Row]:
        """The stored rows (not copies) the filters select, ordered by id. Call under the lock."""
        if query.id_candidates is not None:
            candidates = [
                self._rows[row_id] for row_id in sorted(query.id_candidates) if row_id in self._rows
            ]
        else:
            candidates = [self._rows[row_id] for row_id in self._ordered_ids]
        condition = query.condition
        if condition is None:
            return candidates
        return [row for row in candidates if condition(row) is True]

    def update(self, rows: list[Row], changes: Mapping[str, Any]) -> list[Row]:
        """Set `changes` on `rows` (from `match`) and stamp updated_at; call under the lock."""
        now = datetime.now(UTC)
        for row in rows:
            previous = schema.timestamp_value(row["updated_at"])
            # updated_at must move on every update, even two within one clock tick.
            stamp = now if now > previous else previous + timedelta(microseconds=1)
            row.update(changes)
            row["updated_at"] = schema.format_timestamp(stamp)
            self._update_counts[row["id"]] += 1
        self._updates_total += len(rows)
        return rows

    # --- limits ----------------------------------------------------------------------------

    def configure_limits(self, config: SandboxConfig) -> None:
        """Start a new bucket and quota limit when the rate, burst or quota switches change."""
        settings = (config.rate, config.effective_burst, config.daily_quota)
        with self.lock:
            if settings == self._limit_settings:
                return
            now = self.clock()
            previous_rate = self._limit_settings[:2] if self._limit_settings else None
            if config.rate is None:
                self._bucket = None
            elif previous_rate != settings[:2] or self._bucket is None:
                self._bucket = TokenBucket(config.rate, config.effective_burst, now)
            self._quota.limit = config.daily_quota
            self._limit_settings = settings

    def admit(self, now: float) -> Refusal | None:
        """Count a request against the quota and the bucket; a Refusal when it must get 429."""
        with self.lock:
            day_wait = self._quota.count(now)
            if day_wait is not None:
                return Refusal("daily request quota exceeded", whole_seconds(day_wait))
            if self._bucket is not None:
                wait = self._bucket.take(now)
                if wait is not None:
                    return Refusal("rate limit exceeded", whole_seconds(wait))
            return None

    def limit_headers(self, config: SandboxConfig, now: float) -> list[Header]:
        """The ratelimit-* headers after this request, for the window the switches choose."""
        with self.lock:
            use_day = self._quota.limit is not None and (
                self._bucket is None or config.ratelimit_window == "day"
            )
            if use_day:
                limit = self._quota.limit or 0
                remaining = self._quota.remaining(now)
                reset = self._quota.seconds_until_reset(now)
            elif self._bucket is not None:
                limit = self._bucket.burst
                remaining = self._bucket.remaining(now)
                reset = self._bucket.seconds_until_full(now)
            else:
                return []
        headers: list[Header] = []
        if config.ratelimit_limit_header:
            headers.append((b"ratelimit-limit", str(limit).encode()))
        if config.ratelimit_remaining_header:
            headers.append((b"ratelimit-remaining", str(remaining).encode()))
        if config.ratelimit_reset_header:
            headers.append((b"ratelimit-reset", str(whole_seconds(reset) if reset else 0).encode()))
        return headers

    def advance_day(self) -> None:
        """Jump to a new day: the daily quota is whole again."""
        with self.lock:
            self._quota.advance_day(self.clock())

    def reset_limits(self) -> None:
        """A full bucket and an unused quota, as if the sandbox had just started."""
        with self.lock:
            now = self.clock()
            self._quota.advance_day(now)
            if self._bucket is not None:
                self._bucket = TokenBucket(self._bucket.rate, self._bucket.burst, now)

    # --- stats -----------------------------------------------------------------------------

    def reset_stats(self) -> None:
        with self.lock:
            self._by_method: collections.Counter[str] = collections.Counter()
            self._by_status: collections.Counter[int] = collections.Counter()
            self._faults: collections.Counter[str] = collections.Counter()
            self._update_counts: collections.Counter[str] = collections.Counter()
            self._updates_total = 0
            self._safety_violations = 0
            self._window: collections.deque[float] = collections.deque()
            self._max_in_window = 0
            self._requests = 0
            # _in_flight is a gauge, not a count: requests still being answered stay in flight.
            self._max_in_flight = self._in_flight

    def record_arrival(self, method: str, now: float) -> None:
        """Count a request to /api as it arrives, for the 1-second sliding window too."""
        with self.lock:
            self._requests += 1
            self._by_method[method] += 1
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            window = self._window
            window.append(now)
            # The window is (now - 1 s, now]; the busiest window always ends at an arrival,
            # so checking at each arrival finds the maximum over all windows.
            while window[0] <= now - 1.0:
                window.popleft()
            if len(window) > self._max_in_window:
                self._max_in_window = len(window)

    def record_answer(self, status: int) -> None:
        """Count a request's answer (whatever became of it: sent, cut short, the client gone)."""
        with self.lock:
            self._by_status[status] += 1
            self._in_flight -= 1

    def record_fault(self, kind: str) -> None:
        with self.lock:
            self._faults[kind] += 1

    def record_safety_violation(self) -> None:
        with self.lock:
            self._safety_violations += 1

    def stats(self) -> dict[str, Any]:
        """What happened so far, as plain JSON-ready values."""
        with self.lock:
            return {
                "requests": self._requests,
                "requests_by_method": dict(self._by_method),
                "requests_by_status": {str(code): n for code, n in sorted(self._by_status.items())},
                "rate_limited": self._by_status.get(429, 0),
                "safety_violations": self._safety_violations,
                "max_requests_in_1s": self._max_in_window,
                "max_in_flight": self._max_in_flight,
                "updates": self._updates_total,
                "ids_updated": len(self._update_counts),
                "ids_updated_more_than_once": {
                    row_id: count
                    for row_id, count in sorted(self._update_counts.items())
                    if count > 1
                },
                "faults": dict(self._faults),
                "quota_used_today": self._quota.used,
            }

    # --- request log -----------------------------------------------------------------------

    def open_request_log(self, path: str | Path, *, redact: str | None = None) -> None:
        """Append the log to `path`; `redact` is the token, unless the app has already set it."""
        with self.lock:
            self.close_request_log()
            self._log = Path(path).open("a", encoding="utf-8", buffering=1)
            if redact is not None:
                self._redact = _spellings_of(redact)

    def set_redaction(self, token: str) -> None:
        """The token to blank out if a client ever puts it in a URL."""
        with self.lock:
            self._redact = _spellings_of(token)

    def close_request_log(self) -> None:
        with self.lock:
            if self._log is not None:
                self._log.close()
                self._log = None

    @property
    def logging_requests(self) -> bool:
        return self._log is not None

    def log_request(
        self,
        *,
        method: str,
        path: str,
        query: str,
        status: int,
        arrived: float,
        duration: float,
        ids_matched: list[str],
        ids_updated: list[str],
        committed: bool,
        fault: str | None,
    ) -> None:
        """One JSON line per request (the fields are in the module's docstring); never the token."""
        path, query = self._redacted(path), self._redacted(query)
        entry: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(),
            "arrived": arrived,
            "duration_ms": round(duration * 1000, 3),
            "method": method,
            "path": path + ("?" + query if query else ""),
            "query": query,
            "status": status,
            "ids_matched": ids_matched,
            "ids_updated": ids_updated,
            "committed": committed,
        }
        if fault:
            entry["fault"] = fault
        line = json.dumps(entry, separators=(",", ":"))
        with self.lock:
            if self._log is not None:
                self._log.write(line + "\n")

    def _redacted(self, text: str) -> str:
        return text if self._redact is None else self._redact.sub("[redacted]", text)


def _spellings_of(token: str | None) -> re.Pattern[str] | None:
    """A pattern for the token as it may stand in a URL: any of its characters percent-encoded
    (in either case of hex digit), a space also as `+`."""
    if not token:
        return None
    parts = []
    for char in token:
        encoded = "".join(f"%{byte:02x}" for byte in char.encode())
        choices = [re.escape(char), re.escape(encoded)] + ([r"\+"] if char == " " else [])
        parts.append("(?:" + "|".join(choices) + ")")
    return re.compile("".join(parts), re.IGNORECASE)


def _copy_row(row: Mapping[str, Any]) -> Row:
    copied = dict(row)
    tags = copied.get("tags")
    if isinstance(tags, dict):
        copied["tags"] = dict(tags)
    return copied
