"""Job files: the example jobs against the sandbox, query sources, errors, flags over the file."""

from __future__ import annotations

import argparse
import csv
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from pipeline.cli.job_command import job_flags
from pipeline.cli.main import main
from pipeline.cli.parser import build_parser
from pipeline.commands.job_file import OPTION_NAMES, load_job
from pipeline.commands.jobs import JobSummary, resolve_job, run_job
from pipeline.commands.query_source import (
    CONVERSATION_COLUMNS,
    check_filter,
    resolve_dates,
    resolve_query,
)
from pipeline.core.models import Outcome
from pipeline.sandbox import Sandbox
from pipeline.sandbox.schema import COLUMNS
from pipeline.stages.journal import Journal
from tests.helpers import AGENTS, INBOXES, REPO, read_report, run_cli, write_csv

JOBS = REPO / "jobs"
BILLING = INBOXES[1]
FELIX = "77d5ebfa-2d70-47eb-ba95-89e6bc182f77"
UNKNOWN_ID = "00000000-0000-4000-8000-000000000001"


def job_cli(sandbox: Sandbox, *args: str | Path, cwd: Path) -> Any:
    """`mateo-bulk job ...` as a subprocess against the test's sandbox, the token in the env."""
    return run_cli("job", *args, "--base-url", sandbox.base_url, token=sandbox.token, cwd=cwd)


def run_example(
    sandbox: Sandbox, name: str, tmp_path: Path, *, on_selected: Any = None, **flags: Any
) -> JobSummary:
    """An example job through the Python API, unpaced, its files under tmp_path."""
    given = {
        "base_url": sandbox.base_url,
        "rate": "unlimited",
        "run_dir": str(tmp_path / f"{name}-{{timestamp}}-{len(list(tmp_path.iterdir()))}"),
        "report": str(tmp_path / f"{name}-{len(list(tmp_path.iterdir()))}.csv"),
        **flags,
    }
    job = resolve_job(load_job(JOBS / f"{name}.toml"), given, token=sandbox.token)
    return run_job(job, on_selected=on_selected)


def stderr_events(stderr: str) -> list[dict[str, Any]]:
    """Every stderr line parsed as JSON (fails on any line that is not)."""
    return [json.loads(line) for line in stderr.splitlines()]


# --- The example jobs, as they are ---------------------------------------------------------------


def test_reassign_inbox_job_moves_every_listed_row(sandbox: Sandbox, tmp_path: Path) -> None:
    """jobs/reassign-inbox.toml (file source, mapped id column): listed rows move to Billing."""
    before = {row["id"]: row for row in sandbox.rows()}
    with (JOBS / "reassign-inbox.csv").open(newline="", encoding="utf-8") as file:
        listed = {row["conversation"] for row in csv.DictReader(file)}
    result = job_cli(sandbox, JOBS / "reassign-inbox.toml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    after = {row["id"]: row for row in sandbox.rows()}
    for conversation_id, row in after.items():
        expected = BILLING if conversation_id in listed else before[conversation_id]["inbox_id"]
        assert row["inbox_id"] == expected
        assert row["status"] == before[conversation_id]["status"]
    (report,) = (tmp_path / "reports").glob("reassign-inbox-*.csv")
    assert {line["outcome"] for line in read_report(report)} <= {"updated", "unchanged"}


def test_close_stale_job_closes_only_open_stale_rows(sandbox: Sandbox, tmp_path: Path) -> None:
    """jobs/close-stale.toml (query source, {now-30d}): exactly the matching rows end closed,
    the open ones that never had an inbound message included (or= … is.null)."""
    cutoff = datetime.now(UTC) - timedelta(days=30)
    before = {row["id"]: row for row in sandbox.rows()}
    stale = {
        conversation_id
        for conversation_id, row in before.items()
        if row["status"] == "open"
        and (
            row["latest_inbound_message_created_at"] is None
            or datetime.fromisoformat(row["latest_inbound_message_created_at"]) < cutoff
        )
    }
    never = {i for i in stale if before[i]["latest_inbound_message_created_at"] is None}
    assert len(stale) > 100 and never  # more than two pages of 50
    result = job_cli(sandbox, JOBS / "close-stale.toml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for row in sandbox.rows():
        expected = "closed" if row["id"] in stale else before[row["id"]]["status"]
        assert row["status"] == expected
    (run_dir,) = (tmp_path / "runs").iterdir()
    record = json.loads((run_dir / "query.json").read_text())
    # keyset pages 50, 50, rest: the last page's Content-Range total says it is the last
    assert record["rows"] == len(stale) and record["requests"] == 3
    assert set(record["dates"]) == {"{now-30d}"}


def test_unassign_agent_job_with_sandbox_flag(tmp_path: Path) -> None:
    """`job jobs/unassign-agent.toml --sandbox` as a user runs it: every Felix row unassigned."""
    result = run_cli("job", JOBS / "unassign-agent.toml", "--sandbox", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "the query selected 18 conversations" in result.stderr
    (report,) = (tmp_path / "reports").glob("unassign-agent-*.csv")
    lines = read_report(report)
    assert len(lines) == 18 and {line["outcome"] for line in lines} == {"updated"}
    assert {line["returned_assignee_id"] for line in lines} == {"null"}


def test_unassign_agent_job_final_table(sandbox: Sandbox, tmp_path: Path) -> None:
    """Python API: no conversation is left with the agent; nothing else changed."""
    before = {row["id"]: row for row in sandbox.rows()}
    summary = run_example(sandbox, "unassign-agent", tmp_path)
    assert summary.exit_code == 0 and summary.run is not None
    assert summary.run.counts[Outcome.UPDATED] == 18
    for row in sandbox.rows():
        was = before[row["id"]]
        expected = None if was["assignee_id"] == FELIX else was["assignee_id"]
        assert row["assignee_id"] == expected
        assert (row["status"], row["inbox_id"]) == (was["status"], was["inbox_id"])


# --- Query semantics ----------------------------------------------------------------------------


def test_query_job_run_twice_is_idempotent(sandbox: Sandbox, tmp_path: Path) -> None:
    """The second run selects nothing: no PATCH, one GET, an empty report, exit 0."""
    first = run_example(sandbox, "unassign-agent", tmp_path)
    assert first.exit_code == 0
    table = sandbox.rows()
    sandbox.reset_stats()
    second = run_example(sandbox, "unassign-agent", tmp_path)
    stats = sandbox.stats()
    assert second.run is None and second.exit_code == 0
    assert stats["requests_by_method"] == {"GET": 1}
    assert second.selected is not None and second.selected.rows == 0
    assert second.report_path is not None and read_report(second.report_path) == []
    assert sandbox.rows() == table


def test_row_that_stops_matching_is_conflict(
    sandbox: Sandbox, sandbox_client: httpx.Client, tmp_path: Path
) -> None:
    """A row reassigned between the query and its PATCH is left alone and reported conflict."""
    moved: list[str] = []

    def reassign_one(selected: Any) -> None:
        with selected.ids_path.open(newline="", encoding="utf-8") as file:
            moved.append(next(csv.DictReader(file))["conversation_id"])
        response = sandbox_client.patch(
            "/conversation",
            params={"id": f"eq.{moved[0]}"},
            json={"assignee_id": AGENTS[0]},
        )
        assert response.status_code in (200, 204)

    summary = run_example(sandbox, "unassign-agent", tmp_path, on_selected=reassign_one)
    assert summary.report_path is not None
    outcomes = {
        line["conversation_id"]: line["outcome"] for line in read_report(summary.report_path)
    }
    assert outcomes.pop(moved[0]) == "conflict"
    assert set(outcomes.values()) == {"updated"} and len(outcomes) == 17
    assert sandbox.row(moved[0])["assignee_id"] == AGENTS[0]  # left as the other change made it
    # Conflicts do not count against max_failed_share = 0: the guard did its job.
    assert summary.exit_code == 0


def test_relative_dates_are_resolved_once_and_journaled(sandbox: Sandbox, tmp_path: Path) -> None:
    """{now-30d} becomes one UTC timestamp, used by the GETs, the guard and the journal."""
    now = datetime(2026, 3, 1, 12, 0, 30, tzinfo=UTC)
    job = resolve_job(
        load_job(JOBS / "close-stale.toml"),
        {
            "base_url": sandbox.base_url,
            "rate": "unlimited",
            "run_dir": str(tmp_path / "run"),
            "report": str(tmp_path / "report.csv"),
        },
        token=sandbox.token,
        now=now,
    )
    assert job.settings.query_guard == {
        "status": "eq.open",
        "or": "(latest_inbound_message_created_at.lt.2026-01-30T12:00:30+00:00,"
        "latest_inbound_message_created_at.is.null)",
    }
    summary = run_job(job)
    assert summary.run is not None
    with Journal.open(tmp_path / "run") as journal:
        assert journal.meta()["settings"]["query_guard"] == job.settings.query_guard
    record = json.loads((tmp_path / "run" / "query.json").read_text())
    assert record["dates"] == {"{now-30d}": "2026-01-30T12:00:30+00:00"}
    assert record["resolved_at"] == "2026-03-01T12:00:30+00:00"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("lt.{now-12h}", "lt.2026-03-01T00:00:30+00:00"),
        ("gte.{today}", "gte.2026-03-01T00:00:00+00:00"),
        ("lt.{today-7d}", "lt.2026-02-22T00:00:00+00:00"),
        ("gt.{now+1w}", "gt.2026-03-08T12:00:30+00:00"),
        ("lt.{now-90m}", "lt.2026-03-01T10:30:30+00:00"),
        ("eq.open", "eq.open"),
    ],
)
def test_relative_date_forms(value: str, expected: str) -> None:
    """{now±N[mhdw]} and {today±N...} resolve to UTC ISO timestamps; other values are kept."""
    now = datetime(2026, 3, 1, 12, 0, 30, tzinfo=UTC)
    assert resolve_dates(value, now)[0] == expected


def test_query_columns_are_the_seeds() -> None:
    """A query may filter on exactly the conversation columns the sandbox (the seed) has."""
    assert CONVERSATION_COLUMNS == COLUMNS
    assert resolve_query({"status": "not.in.(open,closed)"}).resolved == {
        "status": "not.in.(open,closed)"
    }


# --- Job-file errors: file, line and key, exit 2, no traceback ------------------------------------

VALID_QUERY_JOB = """\
description = "test"

[source.query]
status = "eq.open"

[set]
status = "closed"
"""


@pytest.mark.parametrize(
    ("text", "line", "key", "words"),
    [
        (VALID_QUERY_JOB + "\n[limits]\nrate = 2\nratee = 3\n", 11, "limits.ratee", "unknown key"),
        (VALID_QUERY_JOB + '\n[limits]\nconcurrency = "four"\n', 10, "limits.concurrency", "four"),
        (VALID_QUERY_JOB + "\n[limit]\nrate = 2\n", 9, "limit", "unknown table"),
        (VALID_QUERY_JOB.replace("eq.open", "equals.open"), 4, "source.query.status", "eq"),
        (VALID_QUERY_JOB.replace("status =", "colour =", 1), 4, "source.query.colour", "column"),
        (VALID_QUERY_JOB.replace("eq.open", "lt.{now-3x}"), 4, "source.query.status", "{now-3x}"),
        (VALID_QUERY_JOB.replace('"closed"', '"shut"'), 7, "set.status", "shut"),
        (VALID_QUERY_JOB + '\n[output]\nreport = "r/{jobname}.csv"\n', 10, "output.report",
         "{job}"),
        ("max_failed_share = 2\n" + VALID_QUERY_JOB, 1, "max_failed_share", "between 0 and 1"),
        ('[source]\nfile = "missing.csv"\n', 2, "source.file", "no such file"),
        ('[source]\nfile = "rows.csv"\n[source.map]\nconversation = "ident"\n', 4,
         "source.map.conversation", "unknown field"),
        ('[source]\nfile = "rows.csv"\n[source.map]\nconversation_id = "ident"\n'
         '[set]\nstatus = "closed"\n', 3, "source.map", "ident"),
        ("[source]\n[set]\n", 1, "source", "either"),
    ],
    ids=[
        "unknown-key", "wrong-type", "unknown-table", "bad-filter", "unknown-column",
        "bad-date", "bad-set-value", "bad-placeholder", "share-range", "missing-file",
        "unknown-map-field", "missing-column", "no-source",
    ],
)  # fmt: skip
def test_job_file_errors_name_file_line_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, line: int, key: str, words: str
) -> None:
    """Each job-file mistake: exit 2, one message naming the file, the line and the key."""
    write_csv(tmp_path / "rows.csv", [{"conversation_id": UNKNOWN_ID}])
    job = tmp_path / "broken.toml"
    job.write_text(text, encoding="utf-8")
    assert main(["job", str(job), "--check"]) == 2
    error = capsys.readouterr().err
    assert f"{job}, line {line}: {key}:" in error, error
    assert words in error and "Traceback" not in error


def test_job_file_error_from_the_real_cli(tmp_path: Path) -> None:
    """As a subprocess: a TOML syntax error names the line; exit 2, no traceback."""
    job = tmp_path / "broken.toml"
    job.write_text('description = "x"\n[limits]\nrate = \n', encoding="utf-8")
    result = run_cli("job", job, "--check", cwd=tmp_path)
    assert result.returncode == 2
    assert f"{job}, line 3: not valid TOML" in result.stderr and "Traceback" not in result.stderr


def test_check_sends_nothing_and_describes_the_job(sandbox: Sandbox, tmp_path: Path) -> None:
    """--check on every example job: exit 0, no request reaches the API."""
    for job in sorted(JOBS.glob("*.toml")):
        result = job_cli(sandbox, job, "--check", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert f"{job}: ok" in result.stdout
    assert sandbox.stats()["requests"] == 0


# --- Flags over the file ------------------------------------------------------------------------


def test_a_flag_beats_the_file_and_the_file_beats_the_default(tmp_path: Path) -> None:
    """Flags given override the file's keys; keys the file gives override run's defaults."""
    job = tmp_path / "job.toml"
    job.write_text(
        VALID_QUERY_JOB
        + "\n[limits]\nrate = 1.5\nconcurrency = 1\nbatch_size = 10\n"
        + "\n[safety]\nguarded = false\n",
        encoding="utf-8",
    )
    args = build_parser().parse_args(
        [
            "job",
            str(job),
            "--concurrency",
            "3",
            "--rate",
            "unlimited",
            "--no-snapshot",
            "--set",
            "status=archived",
        ]
    )
    settings = resolve_job(load_job(job), job_flags(args), token="t").settings
    assert settings.concurrency == 3 and settings.rate is None  # flags
    assert settings.snapshot is False
    assert settings.batch_size == 10 and settings.guarded is False  # the file
    assert settings.max_attempts == 5 and settings.timeout == 10.0  # run's defaults
    assert settings.fixed_values == {"status": "archived"}


def test_a_flag_beats_the_file_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`job FILE --check --batch-size 7` shows the flag's value, not the file's 10."""
    job = tmp_path / "job.toml"
    job.write_text(VALID_QUERY_JOB + "\n[limits]\nbatch_size = 10\n", encoding="utf-8")
    assert main(["job", str(job), "--check", "--batch-size", "7"]) == 0
    assert "batch size 7" in capsys.readouterr().out
    assert main(["job", str(job), "--check"]) == 0
    assert "batch size 10" in capsys.readouterr().out


def test_every_run_flag_has_a_job_key() -> None:
    """Each `mateo-bulk run` flag but --yes is a job-file key ([source.map], [set]: --map/--set)."""
    parser = build_parser()
    run_parser = next(
        action.choices["run"]
        for action in parser._actions
        if isinstance(action, argparse._SubParsersAction)
    )
    dests = {
        action.dest
        for action in run_parser._actions
        if action.option_strings and action.dest != "help"
    }
    # --yes answers a question asked of a person at a terminal: not a setting to review.
    # --notify-url is [notify] url (its own table: the URL may come from a variable or file).
    keyless = {"map", "set", "yes", "notify_url"}
    assert dests - keyless <= OPTION_NAMES, dests - keyless - OPTION_NAMES


# --- Exit codes and --log-format json ------------------------------------------------------------


def failing_job(tmp_path: Path, sandbox: Sandbox, share: float) -> Path:
    """A file job of 2 rows, one of them an unknown id (not_found)."""
    known = sandbox.rows()[0]["id"]
    write_csv(tmp_path / "rows.csv", [{"conversation_id": known}, {"conversation_id": UNKNOWN_ID}])
    job = tmp_path / f"share-{share}.toml"
    job.write_text(
        f'max_failed_share = {share}\n[source]\nfile = "rows.csv"\n[set]\nstatus = "archived"\n'
        f'[limits]\nrate = "unlimited"\n[output]\nrun_dir = "run-{share}"\n',
        encoding="utf-8",
    )
    return job


@pytest.mark.parametrize(("share", "code"), [(0.1, 1), (0.5, 0)])
def test_max_failed_share_decides_the_exit_code(
    sandbox: Sandbox, tmp_path: Path, share: float, code: int
) -> None:
    """1 of 2 rows not_found: share 0.5 > 0.1 exits 1; with max_failed_share 0.5, exit 0."""
    result = job_cli(sandbox, failing_job(tmp_path, sandbox, share), cwd=tmp_path)
    assert result.returncode == code, result.stderr
    assert "failed share: 50.0%" in result.stdout


def test_log_format_json_writes_only_json_lines(sandbox: Sandbox, tmp_path: Path) -> None:
    """--log-format json: stderr is JSON lines only (start, query, progress, summary)."""
    result = job_cli(
        sandbox, JOBS / "unassign-agent.toml", "--log-format", "json", "--rate", "unlimited",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    events = stderr_events(result.stderr)
    kinds = [event["event"] for event in events]
    assert kinds[0] == "start" and kinds[1] == "query" and kinds[-1] == "summary"
    assert "progress" in kinds
    summary = events[-1]
    assert summary["exit_code"] == 0 and summary["counts"] == {"updated": 18}
    assert events[1]["rows"] == 18 and all("time" in event for event in events)


def test_log_format_json_exit_codes_as_in_run(sandbox: Sandbox, tmp_path: Path) -> None:
    """JSON mode keeps exit codes: 1 past max_failed_share, 2 for a bad file, as a stop event."""
    result = job_cli(
        sandbox, failing_job(tmp_path, sandbox, 0.1), "--log-format", "json", cwd=tmp_path
    )
    assert result.returncode == 1
    assert stderr_events(result.stderr)[-1]["exit_code"] == 1
    broken = tmp_path / "broken.toml"
    broken.write_text("[limit]\n", encoding="utf-8")
    result = job_cli(sandbox, broken, "--log-format", "json", cwd=tmp_path)
    (stop,) = stderr_events(result.stderr)
    assert result.returncode == 2 and stop["event"] == "stop" and stop["exit_code"] == 2
    assert f"{broken}, line 1: limit:" in stop["reason"]


def test_run_log_format_json(sandbox: Sandbox, tmp_path: Path) -> None:
    """`run --log-format json` too: only JSON lines on stderr, exit code as in text mode."""
    rows = [{"conversation_id": sandbox.rows()[0]["id"], "status": "archived"}]
    result = run_cli(
        "run", write_csv(tmp_path / "in.csv", rows), "--base-url", sandbox.base_url,
        "--rate", "unlimited", "--log-format", "json", "--run-dir", tmp_path / "run",
        token=sandbox.token, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    events = stderr_events(result.stderr)
    assert events[0]["event"] == "start" and events[-1]["event"] == "summary"
    assert events[-1]["exit_code"] == 0


@pytest.mark.parametrize(
    "column, value",
    [
        ("or", "(status.eq.open,assignee_id.is.null)"),
        (
            "or",
            "(latest_inbound_message_created_at.lt.{now-30d},and(status.eq.open,is_spam.is.true))",
        ),
        ("not.and", "(status.eq.closed,inbox_id.not.is.null)"),
        ("status", "in.(open,closed)"),
        ("assignee_id", "not.is.null"),
    ],
)
def test_logic_and_null_filters_are_accepted(column: str, value: str) -> None:
    """or=(…), and(…) nested, not.and, in.(…) and not.is.null pass the query check."""
    check_filter(column, value)


@pytest.mark.parametrize(
    "column, value",
    [
        ("or", "status.eq.open"),  # no parentheses
        ("or", "(status.eq.open,)"),  # an empty item
        ("or", "(status.eq.open,(x)"),  # unbalanced
        ("or", "(id.eq.3c90c3cc-0d44-4b50-8888-8dd25736052a)"),  # id is what a query reads
        ("or", "(nosuch.eq.1)"),
        ("or", "(status.equals.open)"),
    ],
)
def test_bad_logic_filters_are_refused(column: str, value: str) -> None:
    """A malformed or= tree is refused before anything is sent, naming the problem."""
    with pytest.raises(ValueError):
        check_filter(column, value)
