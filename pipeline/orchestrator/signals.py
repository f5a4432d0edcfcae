"""SIGINT and SIGTERM as a run's stop: a process-wide choice, made only when the caller asks
(the CLI does; a library run leaves the process's signal handlers alone)."""

from __future__ import annotations

import signal
import threading

import anyio
from anyio import CancelScope

from pipeline.api.request_path import RunControl
from pipeline.core.errors import Interrupted


async def watch_signals(control: RunControl, scope: CancelScope, everything: CancelScope) -> None:
    """First SIGINT/SIGTERM: stop taking rows and finish cleanly. Second: stop at once."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be installed from the main thread
    # asyncio puts back Python's default handlers when it lets go of a signal, not the ones it
    # found (SIG_IGN, say, in a process that ignores SIGINT): the caller's are restored here.
    found = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        with scope:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    if control.stopping and isinstance(control.stop_reason, Interrupted):
                        control.aborted = True
                        everything.cancel()
                        return
                    name = signal.Signals(signum).name
                    control.stop(Interrupted(f"stopped by {name}"))
    finally:
        for signum, handler in found.items():
            if handler is not None:
                signal.signal(signum, handler)
