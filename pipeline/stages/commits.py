"""Results gathered into journal commits: what arrives within a short window, one commit.

At hundreds of requests a second a commit per result would cost more than the requests; a
commit per window covers many rows, and a row counts as done only once it is committed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from pipeline.core.models import RowResult

#: Results are committed to the journal at most this often (and at once when the run ends),
#: so that at hundreds of requests a second a commit covers many rows, not one. A row applied
#: but not yet committed when the process dies is read again on resume and found `unchanged`.
COMMIT_INTERVAL = 0.05
COMMIT_ROWS = 5_000


async def commit_batches(
    stream: MemoryObjectReceiveStream[list[RowResult]],
) -> AsyncIterator[list[RowResult]]:
    """Batches of results for one journal commit each: what arrives within a short window."""
    pending: list[RowResult] = []
    window_ends = float("inf")
    while True:
        try:
            with anyio.fail_after(max(0.0, window_ends - anyio.current_time())):
                results = await stream.receive()
        except TimeoutError:
            results = []
        except anyio.EndOfStream:
            break
        if not pending:
            window_ends = anyio.current_time() + COMMIT_INTERVAL
        pending += results
        if anyio.current_time() >= window_ends or len(pending) >= COMMIT_ROWS:
            yield pending
            pending, window_ends = [], float("inf")
    if pending:
        yield pending
