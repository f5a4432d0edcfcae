"""What doctor saw: one request and its answer, and the readings of it more than one judge needs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import httpx

from pipeline.api.client import _parse_seconds, _retry_after

RATE_LIMIT_HEADERS = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset", "retry-after")


@dataclass(frozen=True, slots=True)
class Observation:
    """One request doctor sent and what came back (never the token, never row data)."""

    purpose: str
    method: str
    #: How many ids the filter named (0 for the GET).
    ids: int
    #: Bytes of the request target (path and query), what a proxy's URL limit measures.
    url_length: int
    http_status: int
    headers: Mapping[str, str]
    #: "array", "empty array", "object", "null", "empty", "html" or "not JSON".
    body_shape: str
    error_code: str | None = None
    #: The keys of a JSON error body, sorted.
    error_keys: tuple[str, ...] = ()

    @property
    def ratelimit_remaining(self) -> int | None:
        value = self.headers.get("ratelimit-remaining", "")
        return int(value) if value.strip().isdigit() else None

    @property
    def ratelimit_reset(self) -> float | None:
        value = self.headers.get("ratelimit-reset")
        return None if value is None else _parse_seconds(value)

    @property
    def has_body(self) -> bool:
        return self.body_shape != "empty"

    def summary(self) -> str:
        parts = [f"{self.http_status}", f"body {self.body_shape}"]
        if self.error_code:
            parts.append(f"code {self.error_code}")
        if "content-range" in self.headers:
            parts.append(f"Content-Range {self.headers['content-range']}")
        return ", ".join(parts)


def retry_after_from(headers: Mapping[str, str]) -> float | None:
    return _retry_after(httpx.Response(429, headers=dict(headers)), rate_limited=True)


def means_no_match(observation: Observation) -> bool:
    """A 404 that says "no row matched" (PostgREST before 10.1), not "no such endpoint"."""
    return (
        observation.http_status == 404
        and observation.error_code != "PGRST205"
        and observation.body_shape != "html"
    )


def filter_accepted(observation: Observation) -> bool:
    return observation.http_status in (200, 204) or means_no_match(observation)


def count_exact_honoured(read: Observation) -> bool | None:
    """Did `Prefer: count=exact` bring a total? None when the answer cannot tell."""
    if "count=exact" in read.headers.get("preference-applied", ""):
        return True
    if read.http_status not in (200, 206) or "content-range" not in read.headers:
        return None
    return read.headers["content-range"].rpartition("/")[2].strip().isdigit()
