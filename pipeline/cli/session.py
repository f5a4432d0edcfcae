"""What the CLI's commands share with the person at the terminal: the token, a bundled
sandbox, the progress display and the question before a big run."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from pipeline.core.errors import InputError
from pipeline.orchestrator.hooks import SessionHooks
from pipeline.orchestrator.settings import RunSettings

TOKEN_VARIABLE = "MATEO_API_TOKEN"
#: At a terminal, a run that would change more rows than this asks first: a wrong file or a
#: query's typo is cheapest to catch before the first PATCH, and small runs need no ceremony.
CONFIRM_ABOVE = 100

#: The default of every `job` flag: the job file's value (or the default) applies.
NOT_GIVEN: Any = object()


def read_token(args: argparse.Namespace) -> str:
    if args.token_file:
        path = Path(args.token_file)
        try:
            mode = path.stat().st_mode
            token = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise InputError(f"--token-file {path}: no such file") from None
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(
                f"--token-file {path}: cannot read it ({type(error).__name__})"
            ) from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            warning = f"{path} is readable by other users; chmod 600 it"
            if getattr(args, "log_format", "text") == "json":
                from pipeline.commands.events import JsonEvents

                JsonEvents().emit("warning", message=warning)
            else:
                print(f"mateo-bulk: warning: {warning}", file=sys.stderr)
        if not token:
            raise InputError(f"--token-file {path} is empty")
        return token
    return os.environ.get(TOKEN_VARIABLE, "").strip()


@contextmanager
def progress_display(quiet: bool) -> Iterator[Callable[..., None] | None]:
    if quiet:
        yield None
        return
    from pipeline.cli.progress import LiveProgress, PlainProgress

    display = LiveProgress() if sys.stderr.isatty() else PlainProgress()
    try:
        yield display
    finally:
        display.close()


@contextmanager
def sandbox_for(
    args: argparse.Namespace, settings: RunSettings, *, quiet: bool = False
) -> Iterator[RunSettings]:
    """The settings to use: pointed at a bundled sandbox, with Mateo's limits, with --sandbox."""
    if not args.sandbox:
        yield settings
        return
    with bundled_sandbox(quiet) as (base_url, token):
        yield dataclasses.replace(settings, base_url=base_url, token=token)


@contextmanager
def bundled_sandbox(quiet: bool) -> Iterator[tuple[str, str]]:
    """A sandbox with Mateo's limits on a free loopback port: its base URL and token."""
    from pipeline.api.account import STATE_DIR_VARIABLE
    from pipeline.sandbox import mateo_limits_sandbox

    # The sandbox's requests are not any real account's: they get a budget ledger of their own
    # that disappears with the run, so demos never spend (or fill) a real one.
    with tempfile.TemporaryDirectory() as state, mateo_limits_sandbox() as sandbox:
        os.environ[STATE_DIR_VARIABLE] = state
        if not quiet:
            print(f"mateo-bulk: sandbox serving {sandbox.base_url}", file=sys.stderr)
        yield sandbox.base_url, sandbox.token


def may_ask(args: argparse.Namespace) -> bool:
    """Only a person can answer: stdin and stdout both terminals, and no --yes."""
    return args.yes is not True and sys.stdin.isatty() and sys.stdout.isatty()


def confirmation(settings: RunSettings, display: Any = None) -> Callable[[int], bool]:
    """Asks on the terminal before more than CONFIRM_ABOVE rows change; only "y" goes on."""

    def confirm(count: int) -> bool:
        if count <= CONFIRM_ABOVE:
            return True
        fewer = " (fewer if some are already at their target)" if settings.snapshot else ""
        question = (
            f"mateo-bulk: {count:,} rows will change on {settings.base_url}{fewer} — "
            "continue? [y/N] "
        )
        # The live bar would draw over the question; the event loop's own Ctrl-C handler
        # would only act once the answer is in, so Ctrl-C here means "no", at once.
        with getattr(display, "paused", contextlib.nullcontext)():
            previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            try:
                print(question, end="", flush=True)
                answer = sys.stdin.readline()
            except KeyboardInterrupt:
                answer = ""
            finally:
                signal.signal(signal.SIGINT, previous)
            if not answer.endswith("\n"):
                print(flush=True)  # Ctrl-C or Ctrl-D: end the question's line
        return answer.strip().lower() in ("y", "yes")

    return confirm


def as_a_command() -> SessionHooks:
    """What a run takes from the process when the CLI starts it: SIGINT/SIGTERM stop it, and
    it starts from the answers `mateo-bulk doctor` stored for the account."""
    from pipeline.api.account import load_answers

    return {"handle_signals": True, "stored_answers": load_answers}


def stdin_for(settings: RunSettings) -> BinaryIO | None:
    """The CLI's stdin, for an input of "-"."""
    return sys.stdin.buffer if str(settings.input) == "-" else None
