"""When to try a request again, and how long to wait first."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable

import anyio
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from pipeline.core.errors import TransientError

#: The longest wait between attempts, whatever the backoff or Retry-After says; a longer
#: Retry-After is the quota's business (the run stops or waits for the reset), not a retry's.
MAX_BACKOFF_SECONDS = 60.0
BASE_BACKOFF_SECONDS = 0.5


def backoff_seconds(attempt: int, retry_after: float | None) -> float:
    """Full-jitter exponential backoff; a server's Retry-After, when given, is the floor."""
    ceiling = min(MAX_BACKOFF_SECONDS, BASE_BACKOFF_SECONDS * 2 ** (attempt - 1))
    jitter = random.uniform(0, ceiling)
    if retry_after is not None:
        return min(MAX_BACKOFF_SECONDS, max(retry_after, jitter))
    return jitter


def _wait(state: RetryCallState) -> float:
    error = state.outcome.exception() if state.outcome else None
    retry_after = error.retry_after if isinstance(error, TransientError) else None
    return backoff_seconds(state.attempt_number, retry_after)


def retrying(
    max_attempts: int,
    on_retry: Callable[[TransientError], None] | None = None,
    *,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
) -> AsyncRetrying:
    """A fresh retry controller for one request; never share one between concurrent tasks.

    Only TransientError is retried (429, 5xx, timeouts, dropped connections). That includes
    PATCH, which retry helpers usually leave alone as "not idempotent": ours sets absolute
    values, so applying it twice leaves the row as applying it once would.
    """

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        if on_retry is not None and isinstance(error, TransientError):
            on_retry(error)

    return AsyncRetrying(
        retry=retry_if_exception_type(TransientError),
        stop=stop_after_attempt(max_attempts),
        wait=_wait,
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
