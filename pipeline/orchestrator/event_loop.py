"""The sync functions of the Python API run their async twins in an event loop of their own,
and refuse, saying what to do instead, where one is running already."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio

from pipeline.orchestrator.summary import RunSummary


def refuse_running_loop(function: str) -> None:
    """Raise a RuntimeError that names `function`'s async twin when an event loop is running in
    this thread (Jupyter, an async application).

    A sync function cannot wait there: it would have to block the loop it runs on, and anyio's
    own refusal ("Already running asyncio in this thread") does not say what to do instead.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        f"pipeline.{function}() cannot run inside a running event loop (Jupyter, an async "
        f"application): use `await pipeline.{function}_async(...)` there, with the same arguments"
    )


def run_in_loop(coroutine: Any) -> RunSummary:
    """Run `coroutine` (a `*_async` function's) to its end in an event loop of its own."""
    try:
        refuse_running_loop(coroutine.__name__.removesuffix("_async"))
    except RuntimeError:
        coroutine.close()  # never started: no "coroutine was never awaited" warning
        raise

    async def main() -> RunSummary:
        return await coroutine  # type: ignore[no-any-return]

    try:
        import uvloop  # noqa: F401

        options = {"use_uvloop": True}
    except ImportError:
        options = {}
    return anyio.run(main, backend_options=options)
