"""--max-changes, --expect-rows and the question before a big run, as a user meets them."""

from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.sandbox import Sandbox
from tests.helpers import INBOXES, REPO, read_report, run_cli, write_csv

UNKNOWN_ID = "00000000-0000-4000-8000-000000000001"


def rows_to_close(sandbox: Sandbox, count: int) -> list[dict[str, str]]:
    """`count` rows that each change: conversations not closed yet, closed and moved."""
    ids = [row["id"] for row in sandbox.rows() if row["status"] != "closed"][:count]
    assert len(ids) == count
    return [{"conversation_id": one, "inbox_id": INBOXES[2], "status": "closed"} for one in ids]


def run_against(sandbox: Sandbox, command: str, *args: str | Path, cwd: Path) -> Any:
    """`mateo-bulk COMMAND ARGS` against the test's sandbox, unpaced, the token in the env."""
    return run_cli(
        command, *args, "--base-url", sandbox.base_url, "--rate", "unlimited",
        token=sandbox.token, cwd=cwd,
    )  # fmt: skip


def assert_nothing_sent(sandbox: Sandbox) -> None:
    stats = sandbox.stats()
    assert stats["requests"] == 0 and stats["updates"] == 0, stats


# --- --max-changes and --expect-rows on run ------------------------------------------------------


def test_max_changes_below_the_count_sends_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    """8 rows to change, --max-changes 7: exit 2 with both counts, no request, no run dir."""
    path = write_csv(tmp_path / "in.csv", rows_to_close(sandbox, 8))
    run_dir = tmp_path / "run"
    result = run_against(
        sandbox, "run", path, "--max-changes", "7", "--run-dir", run_dir, cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr
    assert (
        "mateo-bulk: the input yields 8 rows to change, more than --max-changes 7; "
        "nothing was sent" in result.stderr
    )
    assert_nothing_sent(sandbox)
    assert not run_dir.exists()


def test_max_changes_at_the_count_runs(sandbox: Sandbox, tmp_path: Path) -> None:
    """8 rows to change, --max-changes 8: every row is updated."""
    path = write_csv(tmp_path / "in.csv", rows_to_close(sandbox, 8))
    result = run_against(
        sandbox, "run", path, "--max-changes", "8", "--run-dir", tmp_path / "run", cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert sandbox.stats()["ids_updated"] == 8


def test_max_changes_counts_conversations_and_expect_rows_counts_data_rows(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """An identical repeat and an invalid row: 4 conversations to change, 6 data rows."""
    rows = rows_to_close(sandbox, 4)
    rows += [rows[0], {"conversation_id": "not-a-uuid", "status": "closed"}]
    path = write_csv(tmp_path / "in.csv", rows)
    refused = run_against(sandbox, "run", path, "--max-changes", "3", cwd=tmp_path)
    assert refused.returncode == 2
    assert "yields 4 rows to change, more than --max-changes 3" in refused.stderr
    result = run_against(
        sandbox, "run", path, "--max-changes", "4", "--expect-rows", "6",
        "--run-dir", tmp_path / "run", cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr  # the invalid row
    outcomes = [line["outcome"] for line in read_report(tmp_path / "run" / "report.csv")]
    assert outcomes == ["updated"] * 5 + ["invalid"]


def test_expect_rows_mismatch_sends_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    """5 data rows, --expect-rows 6: exit 2 with both counts, no request, no run dir."""
    path = write_csv(tmp_path / "in.csv", rows_to_close(sandbox, 5))
    run_dir = tmp_path / "run"
    result = run_against(
        sandbox, "run", path, "--expect-rows", "6", "--run-dir", run_dir, cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr
    assert (
        "mateo-bulk: the input has 5 rows, not the 6 of --expect-rows; nothing was sent"
        in result.stderr
    )
    assert_nothing_sent(sandbox)
    assert not run_dir.exists()


def test_a_dry_run_is_held_to_the_counts_too(sandbox: Sandbox, tmp_path: Path) -> None:
    """--dry-run --max-changes 2 with 3 planned rows: exit 2, as the real run would."""
    path = write_csv(tmp_path / "in.csv", rows_to_close(sandbox, 3))
    result = run_cli("run", path, "--dry-run", "--max-changes", "2", cwd=tmp_path)
    assert result.returncode == 2
    assert "yields 3 rows to change, more than --max-changes 2" in result.stderr


def test_resume_keeps_the_guards_without_checking_again(sandbox: Sandbox, tmp_path: Path) -> None:
    """A run stopped by --max-requests resumes to the end; its journal keeps the guards."""
    path = write_csv(tmp_path / "in.csv", rows_to_close(sandbox, 4))
    run_dir = tmp_path / "run"
    stopped = run_against(
        sandbox, "run", path, "--max-changes", "4", "--expect-rows", "4", "--no-snapshot",
        "--batch-size", "1", "--concurrency", "1", "--max-requests", "1",
        "--run-dir", run_dir, cwd=tmp_path,
    )  # fmt: skip
    assert stopped.returncode == 3, stopped.stderr
    resumed = run_cli(
        "resume", run_dir, "--base-url", sandbox.base_url, "--max-requests", "100",
        token=sandbox.token, cwd=tmp_path,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    status = run_cli("status", run_dir, cwd=tmp_path)
    assert "  max_changes: 4" in status.stdout and "  expect_rows: 4" in status.stdout


# --- plan and apply ------------------------------------------------------------------------------


def test_plan_and_apply_are_held_to_the_counts(sandbox: Sandbox, tmp_path: Path) -> None:
    """plan counts the input; apply counts the plan's change rows, and refuses without a trace."""
    rows = rows_to_close(sandbox, 3) + [{"conversation_id": UNKNOWN_ID, "status": "closed"}]
    path = write_csv(tmp_path / "in.csv", rows)
    refused = run_against(
        sandbox, "plan", path, "--max-changes", "3", "--run-dir", tmp_path / "p0", cwd=tmp_path
    )
    assert refused.returncode == 2 and "yields 4 rows to change" in refused.stderr
    assert_nothing_sent(sandbox)
    assert not (tmp_path / "p0").exists()
    plan = run_against(
        sandbox, "plan", path, "--max-changes", "4", "--run-dir", tmp_path / "p", cwd=tmp_path
    )
    assert plan.returncode == 1, plan.stderr  # the unknown id: not_found
    plan_file = tmp_path / "p" / "plan.csv"
    sandbox.reset_stats()
    apply_dir = tmp_path / "apply"
    refused = run_against(
        sandbox, "apply", plan_file, "--expect-rows", "4", "--run-dir", apply_dir, cwd=tmp_path
    )
    assert refused.returncode == 2
    assert "the input has 3 rows, not the 4 of --expect-rows" in refused.stderr
    assert_nothing_sent(sandbox)
    assert not apply_dir.exists()
    applied = run_against(
        sandbox, "apply", plan_file, "--expect-rows", "3", "--max-changes", "3",
        "--run-dir", apply_dir, cwd=tmp_path,
    )  # fmt: skip
    assert applied.returncode == 0, applied.stderr
    assert sandbox.stats()["ids_updated"] == 3


# --- jobs ----------------------------------------------------------------------------------------


def file_job(tmp_path: Path, sandbox: Sandbox, safety: str) -> Path:
    """A file job of 3 rows to close, with `safety` as its [safety] table's body."""
    write_csv(tmp_path / "rows.csv", rows_to_close(sandbox, 3))
    job = tmp_path / "job.toml"
    job.write_text(
        f'[source]\nfile = "rows.csv"\n[limits]\nrate = "unlimited"\n[safety]\n{safety}\n'
        '[output]\nrun_dir = "runs/{job}-{timestamp}"\n',
        encoding="utf-8",
    )
    return job


def test_job_file_keys_and_a_flag_over_them(sandbox: Sandbox, tmp_path: Path) -> None:
    """max_changes = 2 refuses 3 rows; expect_rows = 4 refuses 3 rows; the flags beat the file."""
    job = file_job(tmp_path, sandbox, "max_changes = 2")
    refused = run_cli("job", job, "--base-url", sandbox.base_url, token=sandbox.token, cwd=tmp_path)
    assert refused.returncode == 2
    assert "yields 3 rows to change, more than --max-changes 2" in refused.stderr
    assert_nothing_sent(sandbox)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    check = run_cli("job", job, "--check", cwd=tmp_path)
    assert "row guards: at most 2 rows to change" in check.stdout
    job = file_job(tmp_path, sandbox, "expect_rows = 4")
    refused = run_cli("job", job, "--base-url", sandbox.base_url, token=sandbox.token, cwd=tmp_path)
    assert refused.returncode == 2 and "not the 4 of --expect-rows" in refused.stderr
    result = run_cli(
        "job", job, "--expect-rows", "3", "--max-changes", "3", "--base-url", sandbox.base_url,
        token=sandbox.token, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert sandbox.stats()["ids_updated"] == 3


def test_job_file_guard_values_are_checked(tmp_path: Path) -> None:
    """A negative or fractional guard is refused by --check with the file, line and key."""
    job = tmp_path / "job.toml"
    write_csv(tmp_path / "rows.csv", [])
    job.write_text(
        '[source]\nfile = "rows.csv"\n[set]\nstatus = "closed"\n[safety]\nmax_changes = -1\n',
        encoding="utf-8",
    )
    result = run_cli("job", job, "--check", cwd=tmp_path)
    assert result.returncode == 2
    assert f"{job}, line 6: safety.max_changes: must be at least 0" in result.stderr


def test_a_query_job_past_max_changes_changes_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    """unassign-agent selects 18; with --max-changes 10 only its GETs go out: exit 2, no PATCH."""
    result = run_cli(
        "job", REPO / "jobs" / "unassign-agent.toml", "--max-changes", "10",
        "--base-url", sandbox.base_url, "--rate", "unlimited",
        token=sandbox.token, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert (
        "mateo-bulk: the query selected 18 conversations, more than max_changes 10; nothing "
        "was changed; only the query's 1 GET went out" in result.stderr
    )
    stats = sandbox.stats()
    assert stats["updates"] == 0 and stats["requests_by_method"] == {"GET": 1}, stats
    assert not any((tmp_path / "runs").iterdir())  # the ids read are not left to block a rerun


def test_a_query_job_with_expect_rows(sandbox: Sandbox, tmp_path: Path) -> None:
    """unassign-agent selects 18: --expect-rows 17 refuses (no PATCH), --expect-rows 18 runs."""
    job = REPO / "jobs" / "unassign-agent.toml"
    base = ("--base-url", sandbox.base_url, "--rate", "unlimited")
    refused = run_cli("job", job, "--expect-rows", "17", *base, token=sandbox.token, cwd=tmp_path)
    assert refused.returncode == 2
    assert "the query selected 18 conversations, not the 17 of expect_rows" in refused.stderr
    assert sandbox.stats()["updates"] == 0
    result = run_cli("job", job, "--expect-rows", "18", *base, token=sandbox.token, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


# --- The confirmation at a terminal --------------------------------------------------------------


def run_at_terminal(
    *args: str | Path, token: str, cwd: Path, typed: bytes | None = None
) -> tuple[int, str]:
    """`mateo-bulk ARGS` with stdin, stdout and stderr on a pseudo-terminal, as a person runs it.

    `typed` is written to the terminal once the question appears. Returns the exit code and
    everything the terminal showed.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("MATEO_API_TOKEN", "MATEO_BASE_URL")
    }
    env["MATEO_API_TOKEN"] = token
    main, terminal = os.openpty()
    # A terminal of a plausible size, so the live bar lays out as it would for a person.
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *map(str, args)],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=env,
        cwd=cwd,
        start_new_session=True,
    )
    os.close(terminal)
    shown = b""
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 0.1)
            if not ready:
                continue
            try:
                chunk = os.read(main, 65536)
            except OSError:  # EIO: the process and its end of the terminal are gone
                break
            if not chunk:
                break
            shown += chunk
            if typed is not None and b"[y/N]" in shown:
                os.write(main, typed)
                typed = None
        code = process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        if process.poll() is None:
            process.kill()
        os.close(main)
    return code, shown.decode("utf-8", errors="replace")


def terminal_run(
    sandbox: Sandbox, tmp_path: Path, rows: int, *flags: str, typed: bytes | None = None
) -> tuple[int, str]:
    path = write_csv(tmp_path / "in.csv", rows_to_close(sandbox, rows))
    return run_at_terminal(
        "run", path, "--base-url", sandbox.base_url, "--rate", "unlimited",
        "--run-dir", tmp_path / "run", *flags, token=sandbox.token, cwd=tmp_path, typed=typed,
    )  # fmt: skip


@pytest.mark.parametrize("typed", [b"n\n", b"\n", b"\x04"], ids=["n", "enter", "ctrl-d"])
def test_no_at_the_question_sends_nothing(sandbox: Sandbox, tmp_path: Path, typed: bytes) -> None:
    """101 rows at a terminal: asked first; anything but y exits 2 with nothing sent, no run dir."""
    code, shown = terminal_run(sandbox, tmp_path, 101, typed=typed)
    assert (
        f"mateo-bulk: 101 rows will change on {sandbox.base_url} (fewer if some are already at "
        "their target) — continue? [y/N]" in shown
    )
    assert code == 2, shown
    assert "mateo-bulk: not confirmed; nothing was sent" in shown
    assert_nothing_sent(sandbox)
    assert not (tmp_path / "run").exists()


def test_yes_at_the_question_runs(sandbox: Sandbox, tmp_path: Path) -> None:
    """Answering y runs every row, with the live progress bar back after the question."""
    code, shown = terminal_run(sandbox, tmp_path, 101, typed=b"y\n")
    assert "continue? [y/N]" in shown
    assert code == 0, shown
    assert sandbox.stats()["ids_updated"] == 101


def test_apply_asks_too(sandbox: Sandbox, tmp_path: Path) -> None:
    """apply at a terminal asks before changing the plan's 101 rows (no snapshot: no 'fewer')."""
    path = write_csv(tmp_path / "in.csv", rows_to_close(sandbox, 101))
    plan = run_against(sandbox, "plan", path, "--run-dir", tmp_path / "p", cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    sandbox.reset_stats()
    code, shown = run_at_terminal(
        "apply", tmp_path / "p" / "plan.csv", "--base-url", sandbox.base_url,
        "--run-dir", tmp_path / "apply", token=sandbox.token, cwd=tmp_path, typed=b"n\n",
    )  # fmt: skip
    assert f"101 rows will change on {sandbox.base_url} — continue? [y/N]" in shown
    assert code == 2, shown
    assert_nothing_sent(sandbox)
    assert not (tmp_path / "apply").exists()


@pytest.mark.parametrize(
    ("rows", "flags"),
    [(101, ("--yes",)), (100, ()), (101, ("--dry-run",))],
    ids=["--yes", "100 rows", "dry run"],
)
def test_no_question(sandbox: Sandbox, tmp_path: Path, rows: int, flags: tuple[str, ...]) -> None:
    """At a terminal, --yes, a run of at most 100 rows and a dry run are not asked."""
    code, shown = terminal_run(sandbox, tmp_path, rows, *flags, "--quiet")
    assert "[y/N]" not in shown
    assert code == 0, shown


def test_never_asked_when_not_a_terminal(sandbox: Sandbox, tmp_path: Path) -> None:
    """Pipes (cron, CI): 101 rows run without a question."""
    path = write_csv(tmp_path / "in.csv", rows_to_close(sandbox, 101))
    result = run_against(sandbox, "run", path, "--run-dir", tmp_path / "run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "[y/N]" not in result.stdout + result.stderr
    assert sandbox.stats()["ids_updated"] == 101
