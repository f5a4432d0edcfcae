"""Durable runs: the journal, `resume`, clean interrupts and kills at any moment."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pipeline.core.models import Outcome
from pipeline.orchestrator.runner import RunSettings, resume, run
from pipeline.orchestrator.status import run_status
from pipeline.sandbox import Sandbox, SandboxConfig
from pipeline.stages.journal_schema import JOURNAL_VERSION
from tests.helpers import checked_sandbox, read_report, run_cli, write_csv

ROWS = 2_000
CONCURRENCY = 4
BATCH = 10
TOKEN = "resume-test-token"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Sandbox]:
    """A sandbox of 2,100 generated rows, 20 ms latency, logging every request."""
    config = SandboxConfig(token=TOKEN, latency_ms=20)
    with checked_sandbox(
        config, generate=ROWS + 100, request_log=tmp_path / "requests.jsonl"
    ) as sandbox:
        yield sandbox


def job_file(sandbox: Sandbox, tmp_path: Path) -> tuple[Path, str]:
    rows = sandbox.rows()
    target_inbox = rows[-1]["inbox_id"]
    path = write_csv(
        tmp_path / "job.csv",
        [
            {"conversation_id": row["id"], "inbox_id": target_inbox, "status": "archived"}
            for row in rows[:ROWS]
        ],
    )
    return path, target_inbox


def start_run(sandbox: Sandbox, input_path: Path, run_dir: Path) -> subprocess.Popen[str]:
    env = {key: value for key, value in os.environ.items() if key != "MATEO_BASE_URL"}
    env["MATEO_API_TOKEN"] = TOKEN
    command = [
        sys.executable,
        "-m",
        "pipeline",
        "run",
        str(input_path),
        "--base-url",
        sandbox.base_url,
        "--rate",
        "unlimited",
        "--concurrency",
        str(CONCURRENCY),
        "--batch-size",
        str(BATCH),
        "--run-dir",
        str(run_dir),
        "--quiet",
    ]
    return subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def journaled(run_dir: Path, outcomes: tuple[str, ...] = ("updated",)) -> set[str]:
    """Ids whose result is committed in the journal (what a crash cannot take back)."""
    path = run_dir / "journal.sqlite"
    if not path.exists():
        return set()
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
            marks = ",".join("?" * len(outcomes))
            query = f"SELECT conversation_id FROM results WHERE outcome IN ({marks})"
            return {row for (row,) in connection.execute(query, outcomes)}
    except sqlite3.OperationalError:
        return set()  # killed before the tables were made


def journal_state(run_dir: Path) -> str | None:
    try:
        with sqlite3.connect(f"file:{run_dir / 'journal.sqlite'}?mode=ro", uri=True) as connection:
            row = connection.execute("SELECT value FROM meta WHERE key = 'state'").fetchone()
            return json.loads(row[0]) if row else None
    except sqlite3.OperationalError:
        return None


def patched_ids(log: Path, start_line: int = 0) -> list[str]:
    ids: list[str] = []
    for line in log.read_text().splitlines()[start_line:]:
        entry = json.loads(line)
        if entry["method"] == "PATCH" and entry["status"] < 300:
            ids += entry["ids_updated"]
    return ids


def wait_until(
    condition: Callable[[], bool], process: subprocess.Popen[str], timeout: float = 60
) -> bool:
    """Poll fast until `condition` holds; False if the process ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if process.poll() is not None:
            return False
        time.sleep(0.0005)
    raise AssertionError("timed out waiting for the kill moment")


def finish(sandbox: Sandbox, input_path: Path, run_dir: Path) -> subprocess.CompletedProcess[str]:
    """Continue after a kill as a user would: resume, or run again if no journal was made."""
    if (run_dir / "journal.sqlite").exists() and journal_state(run_dir) is not None:
        return run_cli("resume", run_dir, "--quiet", token=TOKEN)
    return run_cli(
        "run",
        input_path,
        "--base-url",
        sandbox.base_url,
        "--rate",
        "unlimited",
        "--concurrency",
        str(CONCURRENCY),
        "--batch-size",
        str(BATCH),
        "--run-dir",
        run_dir,
        "--quiet",
        token=TOKEN,
    )


def check_final_state(
    sandbox: Sandbox, run_dir: Path, target_inbox: str, input_ids: list[str]
) -> None:
    report = read_report(run_dir / "report.csv")
    assert [int(line["row"]) for line in report] == list(range(1, ROWS + 1))
    # `unchanged`: already at the target when read (some rows start there; rows in flight at
    # a kill were applied, and the resumed run's snapshot finds them done).
    assert set(Counter(line["outcome"] for line in report)) <= {"updated", "unchanged"}
    table = {row["id"]: row for row in sandbox.rows()}
    for conversation_id in input_ids:
        assert table[conversation_id]["inbox_id"] == target_inbox
        assert table[conversation_id]["status"] == "archived"


def _after(seconds: float) -> Callable[[], bool]:
    deadline = time.monotonic() + seconds
    return lambda: time.monotonic() >= deadline


KILL_MOMENTS: dict[str, Callable[[Path], Callable[[], bool]]] = {
    "start-up": lambda run_dir: lambda: True,
    "journal-created": lambda run_dir: lambda: journal_state(run_dir) == "running",
    "quarter-done": lambda run_dir: lambda: len(journaled(run_dir)) >= ROWS // 4,
    "two-thirds-done": lambda run_dir: lambda: len(journaled(run_dir)) >= 2 * ROWS // 3,
    "random": lambda run_dir: _after(random.Random(7).uniform(0.3, 1.5)),
    "report-write": lambda run_dir: (
        lambda: (
            (run_dir / "report.csv.partial").exists()
            or (journal_state(run_dir) == "finished" and not (run_dir / "report.csv").exists())
        )
    ),
}


@pytest.mark.long
@pytest.mark.parametrize("moment", list(KILL_MOMENTS))
def test_sigkill_at_any_moment_then_resume_loses_and_repeats_nothing(
    api: Sandbox, tmp_path: Path, moment: str
) -> None:
    """SIGKILL, resume: every row updated once in the report; no journaled id is sent again."""
    input_path, target_inbox = job_file(api, tmp_path)
    input_ids = [row["id"] for row in api.rows()[:ROWS]]
    log = tmp_path / "requests.jsonl"
    run_dir = tmp_path / "run"
    process = start_run(api, input_path, run_dir)
    caught = wait_until(KILL_MOMENTS[moment](run_dir), process)
    assert caught, f"the run ended before the {moment} moment"
    process.send_signal(signal.SIGKILL)
    process.communicate()
    time.sleep(0.3)  # requests in flight at the kill reach the server's log
    done_before = journaled(run_dir)
    first_run_ids = patched_ids(log)
    resume_from_line = len(log.read_text().splitlines())

    result = finish(api, input_path, run_dir)
    assert result.returncode == 0, result.stdout + result.stderr

    resumed_ids = patched_ids(log, resume_from_line)
    assert not done_before & set(resumed_ids), "a row confirmed in the journal was sent again"
    repeated = set(first_run_ids) & set(resumed_ids)
    assert len(repeated) <= CONCURRENCY * BATCH, "more rows repeated than were in flight"
    check_final_state(api, run_dir, target_inbox, input_ids)


def test_sigint_stops_cleanly_prints_the_resume_command_and_resumes(
    api: Sandbox, tmp_path: Path
) -> None:
    """SIGINT: in-flight requests finish, the rest `skipped`, exit 3, resume finishes the job."""
    input_path, target_inbox = job_file(api, tmp_path)
    input_ids = [row["id"] for row in api.rows()[:ROWS]]
    log = tmp_path / "requests.jsonl"
    run_dir = tmp_path / "run"
    process = start_run(api, input_path, run_dir)
    assert wait_until(lambda: len(journaled(run_dir)) >= ROWS // 3, process)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 3, stdout + stderr
    assert f"mateo-bulk resume {run_dir}" in stderr
    assert "Traceback" not in stderr
    report = read_report(run_dir / "report.csv")
    assert len(report) == ROWS
    outcomes = Counter(line["outcome"] for line in report)
    assert set(outcomes) <= {"updated", "unchanged", "skipped"} and outcomes["skipped"] > 0
    done_before = journaled(run_dir)
    assert len(done_before) == outcomes["updated"]  # the report says what the journal holds
    resume_from_line = len(log.read_text().splitlines())

    result = run_cli("resume", run_dir, "--quiet", token=TOKEN)
    assert result.returncode == 0, result.stderr
    resumed_ids = patched_ids(log, resume_from_line)
    assert not done_before & set(resumed_ids)
    assert len(resumed_ids) <= outcomes["skipped"]
    check_final_state(api, run_dir, target_inbox, input_ids)


def test_a_resumed_run_whose_input_was_edited_is_refused(api: Sandbox, tmp_path: Path) -> None:
    """Editing the input between stop and resume: exit 2, a message that says so, nothing sent."""
    input_path, _ = job_file(api, tmp_path)
    settings = RunSettings(
        input_path, token="wrong", base_url=api.base_url, rate=None, run_dir=tmp_path / "run"
    )
    assert run(settings).exit_code == 3
    with input_path.open("a") as file:
        file.write(f"{api.rows()[-1]['id']},,,open\n")
    api.reset_stats()
    result = run_cli("resume", tmp_path / "run", token=TOKEN)
    assert result.returncode == 2
    assert "has changed since the run started" in result.stderr
    assert api.stats()["requests"] == 0


def test_resume_after_an_auth_stop_and_retry_failed(api: Sandbox, tmp_path: Path) -> None:
    """Stop on a bad token, resume with a good one; failed rows come back with --retry-failed."""
    api.configure(latency_ms=0)
    ids = [row["id"] for row in api.rows() if row["status"] != "closed"][:30]
    path = write_csv(tmp_path / "in.csv", [{"conversation_id": i, "status": "closed"} for i in ids])
    run_dir = tmp_path / "run"
    base = {"base_url": api.base_url, "rate": None, "run_dir": run_dir, "batch_size": 5}
    stopped = run(RunSettings(path, token="wrong", **base))
    assert stopped.exit_code == 3 and stopped.counts[Outcome.SKIPPED] == 30

    api.configure(fault_500=1.0)
    failed = resume(run_dir, token=TOKEN)
    assert failed.exit_code == 1 and failed.counts[Outcome.FAILED] == 30
    assert failed.failures_path is not None
    failures = read_report(failed.failures_path)
    assert [line["conversation_id"] for line in failures] == ids
    assert {line["status"] for line in failures} == {"closed"}

    api.configure(fault_500=0.0)
    api.reset_stats()
    unchanged = resume(run_dir, token=TOKEN)
    assert unchanged.counts[Outcome.FAILED] == 30 and api.stats()["requests"] == 0

    retried = resume(run_dir, token=TOKEN, retry_failed=True)
    assert retried.exit_code == 0 and retried.counts[Outcome.UPDATED] == 30
    assert len(read_report(run_dir / "report.csv")) == 30
    assert run_status(run_dir).state == "finished"


def test_status_and_report_commands(api: Sandbox, tmp_path: Path) -> None:
    """`status` shows counts and settings; `report` re-exports in another format."""
    api.configure(latency_ms=0)
    ids = [row["id"] for row in api.rows() if row["status"] != "open"][:6]
    path = write_csv(tmp_path / "in.csv", [{"conversation_id": i, "status": "open"} for i in ids])
    run_dir = tmp_path / "run"
    assert (
        run(
            RunSettings(path, token=TOKEN, base_url=api.base_url, rate=None, run_dir=run_dir)
        ).exit_code
        == 0
    )
    status = run_cli("status", run_dir)
    assert status.returncode == 0
    assert "state: finished" in status.stdout and "updated" in status.stdout
    assert "batch_size: 50" in status.stdout and TOKEN not in status.stdout
    exported = run_cli("report", run_dir, "--report", tmp_path / "again.jsonl")
    assert exported.returncode == 0
    lines = [json.loads(line) for line in (tmp_path / "again.jsonl").read_text().splitlines()]
    assert [line["outcome"] for line in lines] == ["updated"] * 6


def test_a_run_directory_is_never_reused_by_accident(api: Sandbox, tmp_path: Path) -> None:
    """`run --run-dir` on a directory that holds a run: exit 2, pointing at `resume`."""
    api.configure(latency_ms=0)
    path = write_csv(
        tmp_path / "in.csv", [{"conversation_id": api.rows()[0]["id"], "status": "open"}]
    )
    first = run_cli(
        "run", path, "--base-url", api.base_url, "--run-dir", tmp_path / "r", token=TOKEN
    )
    assert first.returncode == 0
    second = run_cli(
        "run", path, "--base-url", api.base_url, "--run-dir", tmp_path / "r", token=TOKEN
    )
    assert second.returncode == 2 and "mateo-bulk resume" in second.stderr


def _stopped_run_with_journal_version(api: Sandbox, tmp_path: Path, version: int) -> Path:
    """A run stopped by a bad token before sending anything, its journal then given `version`."""
    api.configure(latency_ms=0)
    ids = [row["id"] for row in api.rows() if row["status"] != "closed"][:20]
    path = write_csv(tmp_path / "in.csv", [{"conversation_id": i, "status": "closed"} for i in ids])
    run_dir = tmp_path / "run"
    settings = RunSettings(
        path, token="wrong", base_url=api.base_url, rate=None, run_dir=run_dir, batch_size=5
    )
    assert run(settings).exit_code == 3
    with sqlite3.connect(run_dir / "journal.sqlite") as connection:
        assert connection.execute("PRAGMA user_version").fetchone() == (JOURNAL_VERSION,)
        connection.execute(f"PRAGMA user_version = {version}")
    return run_dir


def test_a_run_whose_journal_predates_versions_is_resumed(api: Sandbox, tmp_path: Path) -> None:
    """A journal written before it kept a version (0, the same tables) resumes as any other."""
    run_dir = _stopped_run_with_journal_version(api, tmp_path, 0)
    assert run_status(run_dir).counts[Outcome.SKIPPED] == 20
    resumed = resume(run_dir, token=TOKEN)
    assert resumed.exit_code == 0 and resumed.counts[Outcome.UPDATED] == 20
    assert [line["outcome"] for line in read_report(run_dir / "report.csv")] == ["updated"] * 20
    with sqlite3.connect(run_dir / "journal.sqlite") as connection:
        assert connection.execute("PRAGMA user_version").fetchone() == (JOURNAL_VERSION,)


def test_a_run_whose_journal_is_newer_is_refused(api: Sandbox, tmp_path: Path) -> None:
    """A journal of a newer mateo-bulk: resume exits 2 naming the file, and sends nothing."""
    run_dir = _stopped_run_with_journal_version(api, tmp_path, JOURNAL_VERSION + 1)
    api.reset_stats()
    result = run_cli("resume", run_dir, token=TOKEN)
    assert result.returncode == 2
    assert "written by a newer mateo-bulk" in result.stderr
    assert "journal.sqlite" in result.stderr
    assert api.stats()["requests"] == 0
    status = run_cli("status", run_dir)
    assert status.returncode == 2 and "written by a newer mateo-bulk" in status.stderr


#: `python -m pipeline ARGS` whose process dies (os._exit: no cleanup, as under SIGKILL) the
#: moment the new run's journal first writes its settings.
_DIES_AT_FIRST_META = """
import os, sys
from pipeline.stages.journal import Journal
def die(self, values):
    os._exit(137)
Journal.set_meta = die
from pipeline.cli.main import main
sys.argv[0] = "mateo-bulk"
sys.exit(main(sys.argv[1:]))
"""


def test_a_kill_while_the_journal_is_made_leaves_a_run_dir_run_can_take(
    api: Sandbox, tmp_path: Path
) -> None:
    """Killed between the journal's creation and its first write: nothing was sent, and a new
    `run` on the same --run-dir starts the run (it is not "already holding a run" that resume
    cannot continue, as it was when the empty journal stayed behind)."""
    api.configure(latency_ms=0)
    closed = next(row["id"] for row in api.rows() if row["status"] != "open")
    path = write_csv(tmp_path / "in.csv", [{"conversation_id": closed, "status": "open"}])
    run_dir = tmp_path / "r"
    args = ["run", str(path), "--base-url", api.base_url, "--run-dir", str(run_dir)]
    env = {**os.environ, "MATEO_API_TOKEN": TOKEN}
    killed = subprocess.run(
        [sys.executable, "-c", _DIES_AT_FIRST_META, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert killed.returncode == 137, killed.stderr
    assert api.stats()["requests"] == 0
    again = run_cli(*args, token=TOKEN)
    assert again.returncode == 0, again.stderr
    assert [line["outcome"] for line in read_report(run_dir / "report.csv")] == ["updated"]
