"""What the focused stage tests share: the sample table in a sandbox app of their own, reached
through the real client and request path in-process (httpx.ASGITransport), on trio's virtual
clock so that retries' backoff and Retry-After cost no real time."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import anyio
import httpx
from trio.testing import MockClock

from pipeline.api.client import MateoClient
from pipeline.api.request_path import RequestPath, RunControl
from pipeline.core.models import FieldValues, RowRequest, RowResult
from pipeline.sandbox import SandboxConfig, SandboxState, create_app, default_dataset
from pipeline.stages.grouping import Grouper
from pipeline.stages.send import Sender

BASE_URL = "http://127.0.0.1/api/v1"  # never dialled: the transport is the app
CLOSED = FieldValues.of({"status": "closed"})
T = TypeVar("T")


def table(tmp_path: Path) -> SandboxState:
    """The sample table, logging every request to tmp_path/requests.jsonl."""
    state = SandboxState(default_dataset())
    state.open_request_log(tmp_path / "requests.jsonl")
    return state


def status(state: SandboxState, row_id: str) -> str:
    row = state.row(row_id)
    assert row is not None
    return str(row["status"])


def requests(tmp_path: Path, method: str) -> list[dict[str, Any]]:
    lines = (tmp_path / "requests.jsonl").read_text().splitlines()
    return [entry for line in lines if (entry := json.loads(line))["method"] == method]


@asynccontextmanager
async def request_path(
    state: SandboxState, config: SandboxConfig, max_attempts: int = 3
) -> AsyncIterator[tuple[RequestPath, RunControl]]:
    """The one request path to a sandbox app serving `state` with `config`'s switches."""
    transport = httpx.ASGITransport(app=create_app(config, state))
    async with MateoClient(BASE_URL, config.token, timeout=5.0, transport=transport) as client:
        control = RunControl()
        yield RequestPath(client, control, rate=None, max_attempts=max_attempts), control


async def send_all(path: RequestPath, rows: list[RowRequest]) -> list[RowResult]:
    """Every group a Grouper makes of `rows`, sent by a Sender one after the other."""
    send_rows, receive_rows = anyio.create_memory_object_stream[list[RowRequest]](1)
    grouper = Grouper(receive_rows, batch_size=50)
    sender = Sender(path, grouper)
    async with send_rows:
        await send_rows.send(rows)
    results: list[RowResult] = []
    while (group := await grouper.next_group()) is not None:
        results += await sender.send(group)
    return results


def on_virtual_clock(state: SandboxState, main: Callable[[], Awaitable[T]]) -> T:
    """Run `main` under trio with a clock that jumps over every wait; close the request log."""
    try:
        return anyio.run(
            main, backend="trio", backend_options={"clock": MockClock(autojump_threshold=0)}
        )
    finally:
        state.close_request_log()
