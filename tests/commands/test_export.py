"""export and verify: an input file from the live account, and a check of one against it."""

from __future__ import annotations

import csv
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from pipeline.api.quota import QuotaLedger
from pipeline.commands.export import export_rows
from pipeline.commands.read_settings import ReadSettings
from pipeline.commands.verify import VerifyState, verify_rows
from pipeline.core.errors import InputError, PermanentError
from pipeline.sandbox import Sandbox
from tests.helpers import INBOXES, read_report, run_cli, write_csv

EXPORT_HEADER = [
    "conversation_id",
    "inbox_id",
    "assignee_id",
    "status",
    "expect_inbox_id",
    "expect_assignee_id",
    "expect_status",
]


def cell(value: Any) -> str:
    """A sandbox value as export writes it: JSON null is the word null."""
    return "null" if value is None else str(value)


def expected_rows(sandbox: Sandbox, **where: Any) -> list[dict[str, str]]:
    """The sandbox's rows whose fields equal `where`, as export should write them."""
    rows = []
    for row in sandbox.rows():
        if all(row[column] == value for column, value in where.items()):
            values = {name: cell(row[name]) for name in ("inbox_id", "assignee_id", "status")}
            expects = {f"expect_{name}": value for name, value in values.items()}
            rows.append({"conversation_id": row["id"], **values, **expects})
    return rows


def settings_for(sandbox: Sandbox, **changes: Any) -> ReadSettings:
    return ReadSettings(token=sandbox.token, base_url=sandbox.base_url, rate=None, **changes)


def api_args(sandbox: Sandbox) -> list[str]:
    return ["--base-url", sandbox.base_url, "--rate", "unlimited"]


def gets(sandbox: Sandbox) -> int:
    return int(sandbox.stats()["requests_by_method"].get("GET", 0))


def test_export_reads_every_matching_row_through_short_pages(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Under 7 rows per GET, export writes exactly the matching rows, in id order, once."""
    sandbox.configure(max_rows=7)
    inbox = INBOXES[0]
    expected = expected_rows(sandbox, status="open", inbox_id=inbox)
    assert len(expected) > 14  # three pages at least
    output = tmp_path / "open.csv"

    result = run_cli(
        "export",
        "--where",
        "status=eq.open",
        "--where",
        f"inbox_id=eq.{inbox}",
        "--output",
        output,
        *api_args(sandbox),
        token=sandbox.token,
    )

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert f"{len(expected)} conversations written to {output}" in result.stdout
    with output.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        assert reader.fieldnames == EXPORT_HEADER
        assert list(reader) == expected
    assert gets(sandbox) == -(-len(expected) // 7)
    assert not list(tmp_path.glob("*.partial"))


def test_export_counts_its_gets_in_the_accounts_daily_ledger(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Every GET of an export is taken from the ledger that runs and jobs share."""
    sandbox.configure(max_rows=7)
    summary = export_rows({"status": "eq.closed"}, tmp_path / "c.csv", settings_for(sandbox))
    assert summary.requests == gets(sandbox) > 1
    ledger = QuotaLedger(sandbox.token)
    try:
        assert ledger.budget().used == summary.requests
    finally:
        ledger.close()


@pytest.mark.parametrize("limit", [["--max-requests", "2"], ["--daily-quota", "2"]])
def test_an_export_out_of_budget_stops_and_writes_nothing(
    sandbox: Sandbox, tmp_path: Path, limit: list[str]
) -> None:
    """A budget spent mid-query stops the export (exit 3): no file, no half a file."""
    sandbox.configure(max_rows=7)
    output = tmp_path / "closed.csv"
    result = run_cli(
        "export",
        "--where",
        "status=eq.closed",
        "--output",
        output,
        *api_args(sandbox),
        *limit,
        token=sandbox.token,
    )
    assert result.returncode == 3, result.stderr
    assert "nothing was written" in result.stderr and "Traceback" not in result.stderr
    assert gets(sandbox) == 2
    assert list(tmp_path.iterdir()) == []


def test_export_resolves_relative_dates_once(sandbox: Sandbox, tmp_path: Path) -> None:
    """{now-30d} becomes one UTC timestamp; the rows are those older than it."""
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
    cutoff = now - timedelta(days=30)
    output = tmp_path / "stale.csv"
    summary = export_rows(
        {"status": "eq.open", "latest_message_created_at": "lt.{now-30d}"},
        output,
        settings_for(sandbox),
        now=now,
    )
    expected = [
        row["id"]
        for row in sandbox.rows()
        if row["status"] == "open"
        and row["latest_message_created_at"] is not None
        and datetime.fromisoformat(row["latest_message_created_at"]) < cutoff
    ]
    assert [row["conversation_id"] for row in read_report(output)] == expected
    assert summary.rows == len(expected)
    assert summary.query.dates == {"{now-30d}": cutoff.isoformat(timespec="seconds")}


def test_parquet_export_reads_back_with_pandas(sandbox: Sandbox, tmp_path: Path) -> None:
    """A .parquet export holds the same rows as text columns; JSON null is the word null."""
    sandbox.configure(max_rows=7)
    output = tmp_path / "unassigned.parquet"
    summary = export_rows({"assignee_id": "is.null"}, output, settings_for(sandbox))
    frame = pd.read_parquet(output)
    expected = expected_rows(sandbox, assignee_id=None)
    assert summary.rows == len(expected) > 0
    assert list(frame.columns) == EXPORT_HEADER
    assert frame.to_dict("records") == expected
    assert set(frame["assignee_id"]) == {"null"}


def test_export_refuses_pages_the_api_did_not_order_by_id(sandbox: Sandbox, tmp_path: Path) -> None:
    """A proxy that ignores order=id.asc stops the export; no file is left behind."""

    class Reversing(httpx.AsyncBaseTransport):
        """Passes requests to the sandbox and reverses the rows of every answer."""

        def __init__(self) -> None:
            self._inner = httpx.AsyncHTTPTransport()

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await self._inner.handle_async_request(request)
            body = json.loads(await response.aread())
            headers = {
                name: value
                for name, value in response.headers.items()
                if name.lower() not in ("content-length", "content-encoding")
            }
            return httpx.Response(response.status_code, headers=headers, json=body[::-1])

        async def aclose(self) -> None:
            await self._inner.aclose()

    output = tmp_path / "open.csv"
    with pytest.raises(PermanentError, match="not in id order"):
        export_rows({"status": "eq.open"}, output, settings_for(sandbox), transport=Reversing())
    assert list(tmp_path.iterdir()) == []


def test_export_edit_run_verify_round_trip(sandbox: Sandbox, tmp_path: Path) -> None:
    """export → edit the targets → run → verify: every row at its new target, exit 0."""
    sandbox.configure(max_rows=7)
    inbox = INBOXES[1]
    exported = tmp_path / "open.csv"
    result = run_cli(
        "export",
        "--where",
        "status=eq.open",
        "--where",
        f"inbox_id=eq.{inbox}",
        "--output",
        exported,
        *api_args(sandbox),
        token=sandbox.token,
    )
    assert result.returncode == 0, result.stderr
    rows = read_report(exported)
    edited = write_csv(
        tmp_path / "close.csv",
        [{**row, "status": "closed"} for row in rows],
        EXPORT_HEADER,
    )

    ran = run_cli(
        "run",
        edited,
        *api_args(sandbox),
        "--run-dir",
        tmp_path / "run",
        "--quiet",
        token=sandbox.token,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    now = {row["id"]: row["status"] for row in sandbox.rows()}
    assert {now[row["conversation_id"]] for row in rows} == {"closed"}

    verified = run_cli("verify", edited, *api_args(sandbox), token=sandbox.token)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert f"verify: {len(rows)} rows: {len(rows)} at target, 0 differ" in verified.stdout

    # The export itself now names the old status: every row differs from it.
    stale = run_cli("verify", exported, *api_args(sandbox), token=sandbox.token)
    assert stale.returncode == 1
    assert f"{len(rows)} rows: 0 at target, {len(rows)} differ" in stale.stdout
    assert "status is closed, target open" in stale.stdout


def test_verify_reports_at_target_differs_gone_and_invalid(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Each row gets its state, its targets and the current values; exit code 1."""
    sandbox.configure(max_rows=7)
    first, second, third, deleted = sandbox.rows()[:4]
    sandbox.state.load_rows([row for row in sandbox.rows() if row["id"] != deleted["id"]])
    other_status = "archived" if second["status"] != "archived" else "open"
    never = str(uuid.uuid4())
    source = write_csv(
        tmp_path / "rows.csv",
        [
            {"conversation_id": first["id"], "status": first["status"]},
            {"conversation_id": second["id"], "status": other_status},
            {"conversation_id": deleted["id"], "status": "closed"},
            {"conversation_id": never, "inbox_id": INBOXES[0]},
            {"conversation_id": "not-a-uuid", "status": "closed"},
            {"conversation_id": third["id"], "inbox_id": third["inbox_id"].upper()},
            {"conversation_id": third["id"]},
        ],
    )
    report = tmp_path / "verify.csv"

    summary = verify_rows(source, settings_for(sandbox), report=report)

    states = [row["state"] for row in read_report(report)]
    assert states == ["at_target", "differs", "gone", "gone", "invalid", "at_target", "invalid"]
    assert summary.counts == {
        VerifyState.AT_TARGET: 2,
        VerifyState.DIFFERS: 1,
        VerifyState.GONE: 2,
        VerifyState.INVALID: 2,
    }
    assert summary.exit_code == 1
    differing = read_report(report)[1]
    assert differing["current_status"] == second["status"]
    assert differing["target_status"] == other_status
    assert differing["detail"] == f"status is {second['status']}, target {other_status}"
    assert gets(sandbox) == summary.requests
    assert "differs: status is" in summary.examples[0]


def test_verify_reads_the_input_as_run_does(sandbox: Sandbox, tmp_path: Path) -> None:
    """--map and --set give verify the targets the run had; a Parquet report is written."""
    closed = [row for row in sandbox.rows() if row["status"] == "closed"][:3]
    source = write_csv(
        tmp_path / "ids.csv", [{"ticket": row["id"]} for row in closed], ["ticket", "note"]
    )
    report = tmp_path / "verify.parquet"
    result = run_cli(
        "verify",
        source,
        "--map",
        "conversation_id=ticket",
        "--set",
        "status=closed",
        "--report",
        report,
        *api_args(sandbox),
        token=sandbox.token,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 rows: 3 at target" in result.stdout and f"report: {report}" in result.stdout
    assert set(pd.read_parquet(report)["state"]) == {"at_target"}


def test_export_and_verify_on_the_bundled_sandbox(sandbox: Sandbox, tmp_path: Path) -> None:
    """--sandbox needs no token: export then verify against a fresh bundled sandbox."""
    output = tmp_path / "archived.csv"
    result = run_cli("export", "--sandbox", "--where", "status=eq.archived", "--output", output)
    assert result.returncode == 0, result.stderr
    assert read_report(output) == expected_rows(sandbox, status="archived")
    verified = run_cli("verify", "--sandbox", output)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def existing(tmp_path: Path) -> Path:
    """A valid one-row input in `tmp_path`, and the same bytes under an unsupported suffix."""
    path = write_csv(
        tmp_path / "exists.csv", [{"conversation_id": str(uuid.uuid4()), "status": "closed"}]
    )
    (tmp_path / "exists.json").write_bytes(path.read_bytes())
    return path


BAD_EXPORTS: dict[str, tuple[list[str], str]] = {
    "unknown column": (["--where", "color=eq.red"], "unknown column 'color'"),
    "unknown operator": (["--where", "status=equals.open"], "must look like OPERATOR.VALUE"),
    "no operator": (["--where", "status"], "must look like COLUMN=OPERATOR.VALUE"),
    "id filter": (["--where", "id=eq.x"], "cannot filter on id"),
    "a column twice": (
        ["--where", "status=eq.open", "--where", "status=neq.closed"],
        "given twice",
    ),
    "unknown placeholder": (
        ["--where", "latest_message_created_at=lt.{yesterday}"],
        "unknown placeholder",
    ),
    "unbalanced or": (["--where", "or=(status.eq.open"], "parentheses"),
}


@pytest.mark.parametrize("case", sorted(BAD_EXPORTS))
def test_a_bad_where_is_one_line_exit_2_and_nothing_sent(
    sandbox: Sandbox, tmp_path: Path, case: str
) -> None:
    """A filter that cannot be sent is refused before any request, with one line."""
    flags, message = BAD_EXPORTS[case]
    output = tmp_path / "out.csv"
    result = run_cli("export", *flags, "--output", output, *api_args(sandbox), token=sandbox.token)
    assert_refused(result, message, sandbox)
    assert not output.exists()


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["export", "--where", "status=eq.open", "--output", "out.xlsx"], "suffix must be one of"),
        (["export", "--where", "status=eq.open", "--output", "."], "suffix must be one of"),
        (["export", "--where", "status=eq.open", "--output", "exists.csv"], "pass --force"),
        (["export", "--output", "out.csv"], "--where"),
        (["export", "--where", "status=eq.open"], "--output"),
        (["export", "--where", "status=eq.open", "--output", "o.csv", "--rate", "0"], "--rate"),
        (["verify", "missing.csv"], "no such file"),
        (["verify", "exists.csv", "--report", "r.txt"], "suffix must be one of"),
        (["verify", "exists.csv", "--set", "status=done"], "status must be one of"),
        (["verify", "exists.csv", "--map", "ticket=id"], "unknown field 'ticket'"),
        (["verify", "exists.json"], "unsupported file type"),
        (["verify", "exists.csv", "--token-file", "no-token"], "--token-file"),
    ],
)
def test_bad_flags_and_files_are_one_line_exit_2_and_nothing_sent(
    sandbox: Sandbox, tmp_path: Path, command: list[str], message: str
) -> None:
    """Bad suffixes, paths, files and flags exit 2 with one line, before any request."""
    existing(tmp_path)
    result = run_cli(*command, *api_args(sandbox), token=sandbox.token, cwd=tmp_path)
    assert_refused(result, message, sandbox)


@pytest.mark.parametrize(
    ("base_url", "token", "message"),
    [
        ("http://api.example.com/api/v1", "t", "plain http"),
        ("http://127.0.0.1:1/api/v1?x=1", "t", "a query (?)"),
        ("http://127.0.0.1:1/api/v1/conversation", "t", "already ends in /conversation"),
        (None, "", "no API token"),
        (None, "tök€n", "characters a header cannot carry"),
    ],
)
@pytest.mark.parametrize("command", ["export", "verify"])
def test_a_bad_url_or_token_is_one_line_exit_2_and_nothing_sent(
    sandbox: Sandbox,
    tmp_path: Path,
    command: str,
    base_url: str | None,
    token: str,
    message: str,
) -> None:
    """A base URL or token that cannot be used is refused before anything is sent."""
    source = write_csv(tmp_path / "rows.csv", [{"conversation_id": str(uuid.uuid4())}])
    arguments = (
        ["export", "--where", "status=eq.open", "--output", tmp_path / "out.csv"]
        if command == "export"
        else ["verify", source]
    )
    result = run_cli(*arguments, "--base-url", base_url or sandbox.base_url, token=token or None)
    assert_refused(result, message, sandbox)
    assert not (tmp_path / "out.csv").exists()


def test_the_library_refuses_bad_inputs_before_sending(sandbox: Sandbox, tmp_path: Path) -> None:
    """export_rows and verify_rows raise InputError for what the CLI refuses, sending nothing."""
    settings = settings_for(sandbox)
    with pytest.raises(InputError, match="at least one --where"):
        export_rows({}, tmp_path / "all.csv", settings)
    with pytest.raises(InputError, match="suffix"):
        export_rows({"status": "eq.open"}, tmp_path / "open.json", settings)
    with pytest.raises(InputError, match="no such file"):
        verify_rows(tmp_path / "missing.csv", settings)
    with pytest.raises(InputError, match="no API token"):
        verify_rows(existing(tmp_path), ReadSettings(base_url=sandbox.base_url))
    assert sandbox.stats()["requests"] == 0


def assert_refused(result: Any, message: str, sandbox: Sandbox) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert result.stderr.startswith("mateo-bulk: ")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert sandbox.stats()["requests"] == 0
