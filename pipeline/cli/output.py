"""What the CLI prints at the end of a run and writes to --metrics-file, whatever the outcome."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from pipeline.cli.session import NOT_GIVEN, TOKEN_VARIABLE
from pipeline.core.errors import AuthError, InputError, RunStopped, SafetyError
from pipeline.orchestrator.summary import RunSummary


def check_metrics_file(path: str | None) -> None:
    """--metrics-file (or a job's metrics_file) checked before anything is sent: exit 2."""
    if path is not None and path is not NOT_GIVEN:
        from pipeline.commands.metrics import check_metrics_path

        check_metrics_path(path)


def command_duration(args: argparse.Namespace) -> float:
    started = getattr(args, "started", None)
    return 0.0 if started is None else time.monotonic() - started


def write_run_metrics(args: argparse.Namespace, summary: RunSummary) -> None:
    from pipeline.commands.metrics import RunFigures

    write_figures(args, RunFigures.of_run(summary, duration=command_duration(args)))


def write_error_metrics(args: argparse.Namespace, exit_code: int) -> None:
    """The figures of a command that ended in an error (exit 2, 3 or 4 with no summary): the
    exit code, and the last success carried over, so that an alert on either fires."""
    path = getattr(args, "metrics_file", None)
    if path is None or path is NOT_GIVEN or getattr(args, "check", False):
        return  # (`job --check` runs nothing: the last run's figures stand)
    from pipeline.commands.metrics import RunFigures, check_metrics_path

    try:
        check_metrics_path(path)
    except InputError:
        return  # the path itself was the error, and its message says so
    write_figures(args, RunFigures(exit_code=exit_code, duration=command_duration(args)))


def write_figures(args: argparse.Namespace, figures: Any) -> None:
    """Write the metrics file if one was asked for; a failure is a warning, never an exit code
    (the run is over by now, and its own outcome is what the exit code says)."""
    path = getattr(args, "metrics_file", None)
    if path is None or path is NOT_GIVEN:
        return
    from pipeline.commands.metrics import write_metrics

    try:
        write_metrics(path, figures)
    except OSError as error:
        warning = (
            f"--metrics-file {path} was not written ({error.strerror or type(error).__name__}); "
            "the run's outcome and exit code are unchanged"
        )
        if getattr(args, "log_format", "text") == "json":
            from pipeline.commands.events import JsonEvents

            JsonEvents().emit("warning", message=warning)
        else:
            print(f"mateo-bulk: warning: {warning}", file=sys.stderr)


def print_summary(summary: RunSummary, *, sandbox: bool = False) -> None:
    from pipeline.cli.progress import summary_text

    print(summary_text(summary))
    print_stop(summary, sandbox=sandbox)


def print_stop(summary: RunSummary, *, sandbox: bool = False) -> None:
    stop = summary.stopped
    if stop is None:
        return
    if isinstance(stop, AuthError):
        advice = (
            f"the API answered {stop.http_status}: {stop}. Set {TOKEN_VARIABLE} or "
            "--token-file to a valid token and run again"
        )
    elif isinstance(stop, SafetyError):
        advice = str(stop)
    elif isinstance(stop, RunStopped):
        advice = f"{stop}; rows not attempted are reported as skipped"
    elif isinstance(stop, InputError):
        # Refused before anything was sent (--strict): nothing stopped early.
        print(f"mateo-bulk: {stop}", file=sys.stderr)
        return
    else:
        advice = str(stop)
    print(f"mateo-bulk: stopped early: {advice}", file=sys.stderr)
    if isinstance(stop, RunStopped):
        # A run on the bundled sandbox cannot go back to it: it ended with the process.
        again = " --sandbox" if sandbox else ""
        print(
            f"mateo-bulk: to continue: mateo-bulk resume {summary.run_dir}{again}",
            file=sys.stderr,
        )
