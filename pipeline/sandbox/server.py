"""Serving the sandbox: in a background thread for tests, or in the foreground for the CLI."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import uvicorn

from pipeline.core.errors import InputError
from pipeline.sandbox.app import SandboxApp
from pipeline.sandbox.config import SandboxConfig
from pipeline.sandbox.data import (
    SAMPLE_SEED,
    SAMPLE_SIZE,
    Dataset,
    dataset_from_rows,
    find_default_seed,
    generate_dataset,
    load_seed,
)
from pipeline.sandbox.state import SandboxState

_STARTUP_TIMEOUT = 10.0


def create_app(config: SandboxConfig, state: SandboxState) -> SandboxApp:
    """The ASGI app serving `state` with the switches of `config`."""
    return SandboxApp(config, state)


def _loop_name() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _uvicorn_config(app: SandboxApp, **options: Any) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        http="httptools",
        loop=_loop_name(),
        ws="none",
        lifespan="off",
        access_log=False,
        # An added delay is cut short at shutdown, so this only bounds a stuck client.
        timeout_graceful_shutdown=2,
        **options,
    )


def _resolve_dataset(
    rows: Iterable[Mapping[str, Any]] | None,
    seed_file: str | Path | None,
    generate: int | None,
) -> Dataset:
    given = [
        name
        for name, value in (("rows", rows), ("seed_file", seed_file), ("generate", generate))
        if value is not None
    ]
    if len(given) > 1:
        raise ValueError(f"give at most one of rows, seed_file, generate (got {', '.join(given)})")
    if rows is not None:
        return dataset_from_rows(rows)
    if seed_file is not None:
        return load_seed(seed_file)
    if generate is not None:
        return generate_dataset(generate)
    return default_dataset()


_default_cache: dict[tuple[str, float], Dataset] = {}


def default_dataset() -> Dataset:
    """`sample_data/conversations.csv` when it can be found, else the same rows generated."""
    path = find_default_seed()
    if path is None:
        return generate_dataset(SAMPLE_SIZE, SAMPLE_SEED)
    key = (str(path), path.stat().st_mtime)
    if key not in _default_cache:
        _default_cache.clear()
        _default_cache[key] = load_seed(path)
    return _default_cache[key]


class Sandbox:
    """A running sandbox: where it listens, and handles on its data, switches and stats."""

    def __init__(
        self,
        app: SandboxApp,
        host: str,
        port: int,
        call_in_loop: Callable[[Callable[[], None]], None],
    ) -> None:
        self.app = app
        self.state = app.state
        self.host = host
        self.port = port
        self.root_url = f"http://{host}:{port}"
        self.base_url = f"{self.root_url}/api/v1"
        self._call_in_loop = call_in_loop
        self._initial_config = app.config

    @property
    def token(self) -> str:
        return self.app.config.token

    @property
    def config(self) -> SandboxConfig:
        return self.app.config

    def rows(self) -> list[dict[str, Any]]:
        """A copy of every conversation, ordered by id."""
        return self.state.rows()

    def row(self, row_id: str) -> dict[str, Any] | None:
        """A copy of one conversation, or None."""
        return self.state.row(row_id)

    def stats(self) -> dict[str, Any]:
        return self.state.stats()

    def configure(self, **changes: Any) -> SandboxConfig:
        """Change switches while serving, e.g. turn a fault on mid-test."""
        return self.app.configure(**changes)

    def reset_stats(self) -> None:
        self.state.reset_stats()

    def advance_day(self) -> None:
        """Start a new day: the daily quota is whole again."""
        self.state.advance_day()

    def reset(self, config: SandboxConfig | None = None) -> None:
        """Back to the start: the original rows, stats, limits, fault draws and switches.

        Requests still waiting out an added delay are woken and answer 503 without changing
        anything, so they cannot leak into what comes next.
        """
        self.app.start_new_generation()
        self._call_in_loop(self.app.wake_sleepers)
        self.app.set_config(config or self._initial_config)
        self.app.restart_faults()
        self.state.reset_rows()
        self.state.reset_stats()
        self.state.reset_limits()

    def stop_delays(self) -> None:
        """Cut added delays short, for good, so shutdown does not wait for them."""
        self._call_in_loop(lambda: self.app.wake_sleepers(for_good=True))


@contextmanager
def running_sandbox(
    config: SandboxConfig | None = None,
    *,
    rows: Iterable[Mapping[str, Any]] | None = None,
    seed_file: str | Path | None = None,
    generate: int | None = None,
    request_log: str | Path | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Sandbox]:
    """Serve a sandbox on 127.0.0.1 (a free port) in a background thread while the block runs.

    Data: `rows`, a `seed_file`, `generate` N rows, or by default the sample data.
    """
    config = config or SandboxConfig()
    state = SandboxState(_resolve_dataset(rows, seed_file, generate), clock=clock)
    if request_log is not None:
        state.open_request_log(request_log, redact=config.token)
    app = create_app(config, state)
    # Binding the socket here, to port 0, gives a free port with no window for another
    # process to take it between choosing and listening.
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(2048)
    port = listener.getsockname()[1]
    # log_config=None: a sandbox inside a test run leaves the process's logging set-up alone.
    server = uvicorn.Server(_uvicorn_config(app, log_config=None))
    loop_holder: list[asyncio.AbstractEventLoop] = []
    failure: list[BaseException] = []

    async def serve_forever() -> None:
        loop_holder.append(asyncio.get_running_loop())
        await server.serve(sockets=[listener])

    def run() -> None:
        try:
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                runner.run(serve_forever())
        except BaseException as error:  # reported to the caller, which re-raises it
            failure.append(error)

    thread = threading.Thread(target=run, name=f"sandbox-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + _STARTUP_TIMEOUT
    while not server.started:
        if failure or not thread.is_alive():
            listener.close()
            raise RuntimeError("the sandbox server failed to start") from (
                failure[0] if failure else None
            )
        if time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the sandbox server did not start within 10 seconds")
        time.sleep(0.002)

    def call_in_loop(callback: Callable[[], None]) -> None:
        if loop_holder and not loop_holder[0].is_closed():
            loop_holder[0].call_soon_threadsafe(callback)

    sandbox = Sandbox(app, "127.0.0.1", port, call_in_loop)
    try:
        yield sandbox
    finally:
        sandbox.stop_delays()
        server.should_exit = True
        thread.join(timeout=15)
        state.close_request_log()
        listener.close()


@contextmanager
def mateo_limits_sandbox(**changes: Any) -> Iterator[Sandbox]:
    """A sandbox with Mateo's documented limits and the sample data.

    2 requests a second (bucket of 2), 10,000 a day, the 2-second cut-off; `changes` override
    any switch.
    """
    config = SandboxConfig(rate=2.0, burst=2, daily_quota=10_000, cutoff_seconds=2.0)
    with running_sandbox(config.replace(**changes)) as sandbox:
        yield sandbox


def serve(
    config: SandboxConfig, state: SandboxState, host: str = "127.0.0.1", port: int = 8080
) -> None:
    """Serve in the foreground until SIGINT or SIGTERM (the `mateo-bulk sandbox` command)."""
    app = create_app(config, state)
    server = uvicorn.Server(_uvicorn_config(app, host=host, port=port, log_level="warning"))
    try:
        server.run()
    except SystemExit as error:
        raise InputError(f"cannot serve on {host}:{port} (is the port already in use?)") from error
    finally:
        state.close_request_log()
