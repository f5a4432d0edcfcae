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


def test_a_wrong_base_path_stops_the_run_after_one_answer(
    sandbox: Sandbox, tmp_path: Path
) -> None:
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
def test_a_wrong_token_costs_one_request(
    sandbox: Sandbox, tmp_path: Path, snapshot: bool
) -> None:
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


def test_status_of_a_killed_run_says_the_process_is_gone(
    sandbox: Sandbox, tmp_path: Path
) -> None:
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

    from pipeline.errors import InputError
    from pipeline.runner import resume

    with pytest.raises(InputError):
        resume(tmp_path, token="t", overrides={"batch_size": 5})
