"""Shared helpers for tests that run mateo-bulk against the sandbox."""

from __future__ import annotations

import contextlib
import csv
import io
import os
import signal
import subprocess
import sys
import traceback
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from signal import SIGINT, SIGTERM
from typing import Any

from pipeline.sandbox import Sandbox, SandboxConfig, running_sandbox

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample_data"
COLUMNS = ("conversation_id", "inbox_id", "assignee_id", "status")


def read_ids(name: str) -> list[str]:
    with (SAMPLE / name).open(newline="", encoding="utf-8") as file:
        return [row["id"] for row in csv.DictReader(file)]


INBOXES = read_ids("inboxes.csv")
AGENTS = read_ids("agents.csv")


def write_csv(
    path: Path, rows: Iterable[Mapping[str, str]], columns: Sequence[str] = COLUMNS
) -> Path:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({column: row.get(column, "") for column in columns})
    return path


def read_report(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def run_cli(
    *args: str | os.PathLike[str],
    token: str | None = None,
    cwd: Path | None = None,
    stdin: bytes | None = None,
    timeout: float = 120,
    process: bool = False,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run the `mateo-bulk ARGS` command line as a user would, with only the token we give it.

    In this process by default: the command's own `main`, with the environment, working
    directory, stdin, stdout and stderr a new process would have, and all of them given back
    afterwards. Starting Python and importing the package again costs most of a second of CPU
    per command, which for the hundreds of commands of the suite was most of its time.
    `process=True` starts `python -m pipeline ARGS` instead, for what only a process shows
    (the entry point itself, what it leaves behind at exit) and for `timeout`. `env` holds
    variables to set on top of this process's environment (without its token and base URL).
    """
    environment = {
        key: value
        for key, value in os.environ.items()
        if key not in ("MATEO_API_TOKEN", "MATEO_BASE_URL")
    }
    environment.update(env or {})
    if token is not None:
        environment["MATEO_API_TOKEN"] = token
    arguments = [str(arg) for arg in args]
    if process:
        return subprocess.run(
            [sys.executable, "-m", "pipeline", *arguments],
            input=stdin.decode() if stdin is not None else None,
            capture_output=True,
            text=True,
            env=environment,
            cwd=cwd,
            timeout=timeout,
        )
    with _as_a_new_process(environment, cwd, stdin or b"") as output:
        returncode = _exit_code_of_main(arguments)
    return subprocess.CompletedProcess(
        ["mateo-bulk", *arguments], returncode, output.stdout, output.stderr
    )


@dataclass
class _Output:
    stdout: str = ""
    stderr: str = ""


def _exit_code_of_main(arguments: list[str]) -> int:
    """What `python -m pipeline ARGUMENTS` exits with; a traceback goes to stderr, as Python's."""
    from pipeline.cli.main import main

    try:
        return main(arguments)
    except SystemExit as exit:
        if exit.code is None or isinstance(exit.code, int):
            return exit.code or 0
        print(exit.code, file=sys.stderr)
        return 1
    except Exception:
        traceback.print_exc()
        return 1


@contextlib.contextmanager
def _as_a_new_process(
    environment: dict[str, str], cwd: Path | None, stdin: bytes
) -> Iterator[_Output]:
    """The process state a new `python -m pipeline` starts with, given back on the way out:
    the environment, the working directory, the standard streams (none a terminal), the
    SIGINT/SIGTERM handlers, and Python's default warning filters (a warning is shown on
    stderr, as Python shows it, not raised as pytest's filter would)."""
    saved_environment = dict(os.environ)
    saved_cwd = os.getcwd()
    saved_streams = sys.stdin, sys.stdout, sys.stderr
    saved_handlers = {number: signal.getsignal(number) for number in (SIGINT, SIGTERM)}
    stdout, stderr = io.BytesIO(), io.BytesIO()
    streams = (
        io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"),
        io.TextIOWrapper(stdout, encoding="utf-8", write_through=True),
        io.TextIOWrapper(stderr, encoding="utf-8", errors="backslashreplace", write_through=True),
    )
    output = _Output()
    os.environ.clear()
    os.environ.update(environment)
    try:
        if cwd is not None:
            os.chdir(cwd)
        sys.stdin, sys.stdout, sys.stderr = streams
        with warnings.catch_warnings(record=True) as caught:
            warnings.resetwarnings()
            warnings.simplefilter("default")
            for quiet in (DeprecationWarning, PendingDeprecationWarning, ImportWarning):
                warnings.simplefilter("ignore", quiet)
            warnings.simplefilter("ignore", ResourceWarning)
            try:
                yield output
            finally:
                for stream in streams[1:]:
                    stream.flush()
                output.stdout = stdout.getvalue().decode("utf-8")
                output.stderr = stderr.getvalue().decode("utf-8", "backslashreplace") + "".join(
                    warnings.formatwarning(w.message, w.category, w.filename, w.lineno, w.line)
                    for w in caught
                )
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved_streams
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_environment)
        for number, handler in saved_handlers.items():
            signal.signal(number, handler)


@contextlib.contextmanager
def checked_sandbox(config: SandboxConfig | None = None, **options: Any) -> Iterator[Sandbox]:
    """A sandbox of a test's own (`running_sandbox`'s arguments), for a token, data or request
    log the shared `sandbox` fixture does not have; as that fixture, it fails the test if it
    counted a safety violation."""
    with running_sandbox(config, **options) as sandbox:
        yield sandbox
        violations = sandbox.stats()["safety_violations"]
        assert violations == 0, f"the sandbox counted {violations} safety violations"
