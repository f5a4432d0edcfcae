"""Fail fast and say what happened: a wrong base URL, an unreachable API, an honest summary."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.sandbox import Sandbox
from tests.helpers import read_report, run_cli, write_csv


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port nothing listens on: bound, not listening, and held for the whole test.

    A port released at once could be taken (tests run in parallel, each pytest-xdist worker
    starting servers on port 0) and answer the connection the test expects refused.
    """
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield int(holder.getsockname()[1])


def moving_rows(sandbox: Sandbox, tmp_path: Path, count: int) -> Path:
    rows = [{"conversation_id": row["id"], "status": "archived"} for row in sandbox.rows()]
    return write_csv(tmp_path / "in.csv", rows[:count])


def test_an_unreachable_api_stops_within_seconds_and_costs_nothing(
    sandbox: Sandbox, tmp_path: Path, closed_port: int
) -> None:
    """A refused connection: exit 3 in seconds, the cause named, rows skipped, no budget spent."""
    path = moving_rows(sandbox, tmp_path, 200)
    started = time.monotonic()
    result = run_cli(
        "run", path, "--base-url", f"http://127.0.0.1:{closed_port}/api/v1",
        "--rate", "unlimited", "--run-dir", tmp_path / "run", "--quiet", token="tok-" + "a" * 30,
    )  # fmt: skip
    assert time.monotonic() - started < 60
    assert result.returncode == 3, result.stdout + result.stderr
    assert "refused" in result.stderr and "Traceback" not in result.stderr
    assert "stopped after" in result.stdout
    assert "0 requests" in result.stdout
    assert "10,000 of 10,000 requests left" in result.stdout
    outcomes = {line["outcome"] for line in read_report(tmp_path / "run" / "report.csv")}
    assert outcomes == {"skipped"}


def test_a_wrong_base_path_stops_the_run_after_one_answer(sandbox: Sandbox, tmp_path: Path) -> None:
    """A 404 from a wrong --base-url path stops the run (exit 3) instead of failing every row."""
    path = moving_rows(sandbox, tmp_path, 200)
    wrong = sandbox.base_url.replace("/api/v1", "/api/v2")
    result = run_cli(
        "run", path, "--base-url", wrong, "--rate", "unlimited", "--run-dir", tmp_path / "run",
        "--quiet", token=sandbox.token,
    )  # fmt: skip
    assert result.returncode == 3, result.stdout + result.stderr
    assert "check --base-url" in result.stderr and "Traceback" not in result.stderr
    assert sandbox.stats()["requests"] <= 5
    assert sandbox.stats()["updates"] == 0


@pytest.mark.parametrize("snapshot", [True, False], ids=["snapshot", "no-snapshot"])
def test_a_wrong_token_costs_one_request(sandbox: Sandbox, tmp_path: Path, snapshot: bool) -> None:
    """The run's first request is its preflight: the others wait for its answer, so a refused
    token stops the run after one request, not after a pool of them."""
    path = moving_rows(sandbox, tmp_path, 200)
    result = run_cli(
        "run", path, "--base-url", sandbox.base_url, "--rate", "unlimited", "--concurrency", "8",
        "--batch-size", "1", "--run-dir", tmp_path / "run", "--quiet",
        *([] if snapshot else ["--no-snapshot"]), token="tok-" + "b" * 30,
    )  # fmt: skip
    assert result.returncode == 3, result.stdout + result.stderr
    assert "403" in result.stderr and "Traceback" not in result.stderr
    assert sandbox.stats()["requests"] == 1
    assert sandbox.stats()["updates"] == 0
    outcomes = {line["outcome"] for line in read_report(tmp_path / "run" / "report.csv")}
    assert outcomes == {"skipped"}


def test_a_closed_pipe_is_not_a_traceback(sandbox: Sandbox, tmp_path: Path) -> None:
    """`mateo-bulk status RUN | head`: a reader that went away leaves no traceback, exit 0."""
    import os
    import subprocess
    import sys

    path = moving_rows(sandbox, tmp_path, 5)
    dry = run_cli("run", path, "--dry-run", "--run-dir", tmp_path / "run", "--quiet")
    assert dry.returncode == 0, dry.stderr
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the first byte: every write breaks the pipe
    try:
        status = subprocess.run(
            [sys.executable, "-m", "pipeline", "status", str(tmp_path / "run")],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in status.stderr, status.stderr
    assert status.returncode == 0


def test_status_of_a_killed_run_says_the_process_is_gone(sandbox: Sandbox, tmp_path: Path) -> None:
    """After kill -9, `status` says `stopped (process gone)`, not `running` forever."""
    import os
    import signal
    import subprocess
    import sys

    sandbox.configure(latency_ms=200)
    path = moving_rows(sandbox, tmp_path, 100)
    env = {key: value for key, value in os.environ.items() if key != "MATEO_BASE_URL"}
    env["MATEO_API_TOKEN"] = sandbox.token
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "run", str(path), "--base-url", sandbox.base_url,
         "--rate", "unlimited", "--batch-size", "1", "--run-dir", str(tmp_path / "run"),
         "--quiet"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while sandbox.stats()["requests"] < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    # From here each answer takes a minute: the run is still going when `status` looks, however
    # long a busy machine takes to start it (the sandbox's reset wakes these requests after).
    sandbox.configure(latency_ms=60_000)
    live = run_cli("status", tmp_path / "run")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)
    assert "state: running" in live.stdout, live.stdout
    gone = run_cli("status", tmp_path / "run")
    assert "stopped (process gone)" in gone.stdout, gone.stdout


def test_the_summary_always_says_where_the_undo_file_is_or_why_there_is_none(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """A run names its undo file; a --no-snapshot run says loudly that it has none."""
    path = moving_rows(sandbox, tmp_path, 3)
    common = ("--base-url", sandbox.base_url, "--rate", "unlimited", "--quiet")
    guarded = run_cli("run", path, *common, "--run-dir", tmp_path / "a", token=sandbox.token)
    assert f"undo: {tmp_path / 'a' / 'undo.csv'}" in guarded.stdout, guarded.stdout
    again = run_cli("run", path, *common, "--run-dir", tmp_path / "b", token=sandbox.token)
    assert "undo: none needed" in again.stdout, again.stdout
    path = write_csv(
        tmp_path / "open.csv",
        [{"conversation_id": row["id"], "status": "open"} for row in sandbox.rows()[:3]],
    )
    blind = run_cli(
        "run", path, *common, "--no-snapshot", "--run-dir", tmp_path / "c", token=sandbox.token
    )
    assert "undo: NONE" in blind.stdout, blind.stdout


def test_resume_can_be_steered_and_records_what_it_changed(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """resume --no-wait --rate --max-requests --base-url: applied, and kept apart in the journal."""
    import json
    import sqlite3

    path = moving_rows(sandbox, tmp_path, 30)
    common = ("--rate", "unlimited", "--quiet", "--batch-size", "5")
    stopped = run_cli(
        "run", path, "--base-url", sandbox.base_url, *common, "--max-requests", "2", "--wait",
        "--run-dir", tmp_path / "run", token=sandbox.token,
    )  # fmt: skip
    assert stopped.returncode == 3, stopped.stdout + stopped.stderr
    resumed = run_cli(
        "resume", tmp_path / "run", "--no-wait", "--rate", "unlimited", "--max-requests", "100",
        "--base-url", sandbox.base_url.replace("127.0.0.1", "localhost"), "--quiet",
        token=sandbox.token,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    with sqlite3.connect(tmp_path / "run" / "journal.sqlite") as journal:
        meta = {key: json.loads(value) for key, value in journal.execute("SELECT * FROM meta")}
    assert meta["resume_overrides"] == {
        "base_url": sandbox.base_url.replace("127.0.0.1", "localhost"),
        "rate": None,
        "max_requests": 100,
        "wait": False,
    }
    assert meta["settings"]["wait"] is True and meta["settings"]["max_requests"] == 2


def test_resume_refuses_to_change_what_a_row_means(tmp_path: Path) -> None:
    """Only how the rest is sent may change on resume; anything else is an InputError."""
    import pytest

    from pipeline.core.errors import InputError
    from pipeline.orchestrator.runner import resume

    with pytest.raises(InputError):
        resume(tmp_path, token="t", overrides={"batch_size": 5})


@pytest.mark.long
def test_a_long_wait_is_a_json_event_and_the_phase(sandbox: Sandbox, tmp_path: Path) -> None:
    """A wait for the API's window to reset is told at once (`waiting`: until when, why), and
    the progress events say which phase the run is in: a scheduler watching the log must not
    take a quiet run for a hung one."""
    import json

    sandbox.configure(rate=0.18, burst=1)  # one request, then ~6 s until the next token
    path = moving_rows(sandbox, tmp_path, 2)
    result = run_cli(
        "run", path, "--base-url", sandbox.base_url, "--rate", "unlimited", "--no-snapshot",
        "--batch-size", "1", "--log-format", "json", "--run-dir", tmp_path / "run",
        token=sandbox.token,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines()]
    waits = [event for event in events if event["event"] == "waiting"]
    assert waits, [event["event"] for event in events]
    assert 4 <= waits[0]["seconds"] <= 10
    assert "ratelimit-remaining" in waits[0]["reason"]
    phases = [event["phase"] for event in events if event["event"] == "progress"]
    assert phases[-1] == "sending"
    assert sandbox.stats()["updates"] == 2


@pytest.mark.parametrize("width", [50, 79, 100, 160])
def test_the_live_bar_fits_the_terminal_and_shows_the_phase(width: int) -> None:
    """Below ~120 columns the bar used to wrap into an unreadable block; now what does not fit
    is left out, the phase always stays."""
    import io
    import re
    from datetime import UTC, datetime, timedelta

    from rich.console import Console

    from pipeline.cli.progress import LiveProgress
    from pipeline.core.models import Outcome
    from pipeline.orchestrator.summary import Progress

    buffer = io.StringIO()
    console = Console(file=buffer, width=width, force_terminal=True, color_system=None)
    display = LiveProgress(console)
    until = datetime.now(UTC) + timedelta(hours=3)
    counts = dict.fromkeys(Outcome, 0) | {Outcome.UPDATED: 123_456, Outcome.FAILED: 12}
    phase = f"waiting until {until:%H:%M:%S} UTC"
    display(Progress(123_468, 1_000_000, counts, 130_000, 65_000.0, 2.0, 8_000, phase, until))
    display.close()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", buffer.getvalue())
    lines = [line for line in text.replace("\r", "\n").splitlines() if line.strip()]
    assert lines and all(len(line) <= width for line in lines), lines
    assert phase in lines[-1] and "123468/1000000" in lines[-1]
    if width >= 100:
        assert "updated 123,456" in lines[-1]
    if width >= 160:
        assert "budget left 8,000" in lines[-1]


def test_a_notice_is_told_before_the_first_request(sandbox: Sandbox, tmp_path: Path) -> None:
    """What the run has to say about its input (here: a column that looks like a target but is
    not read) is a `notice` event before any row is sent, not only a line of the summary."""
    import json

    rows = [{**row, "inbox": "9"} for row in moving_rows_as_dicts(sandbox, 3)]
    path = write_csv(tmp_path / "in.csv", rows, columns=("conversation_id", "status", "inbox"))
    result = run_cli(
        "run", path, "--base-url", sandbox.base_url, "--rate", "unlimited", "--log-format",
        "json", "--run-dir", tmp_path / "run", token=sandbox.token,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines()]
    kinds = [event["event"] for event in events]
    assert "notice" in kinds, kinds
    notice = events[kinds.index("notice")]
    assert "column 'inbox' is not read" in notice["message"]
    progress = [
        event for event in events[: kinds.index("notice") + 1] if event["event"] == "progress"
    ]
    assert all(event["requests"] == 0 for event in progress)


def moving_rows_as_dicts(sandbox: Sandbox, count: int) -> list[dict[str, str]]:
    return [{"conversation_id": row["id"], "status": "archived"} for row in sandbox.rows()[:count]]
