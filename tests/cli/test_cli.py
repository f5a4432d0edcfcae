"""The `mateo-bulk run` command as a user runs it: a subprocess, exit codes, stderr, files."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.api.account import store_answers
from pipeline.sandbox import Sandbox, SandboxConfig
from tests.helpers import INBOXES, SAMPLE, checked_sandbox, read_report, run_cli, write_csv

SECRET = "tok-5f2e9c1a7b3d4e8f9a0b1c2d3e4f5a6b"
UNKNOWN_ID = "00000000-0000-4000-8000-000000000001"


@pytest.fixture
def api() -> Iterator[Sandbox]:
    """A sandbox whose token is a distinctive secret, so any leak of it can be found."""
    with checked_sandbox(SandboxConfig(token=SECRET)) as sandbox:
        yield sandbox


def some_rows(sandbox: Sandbox, count: int) -> list[dict[str, str]]:
    return [
        {"conversation_id": row["id"], "inbox_id": INBOXES[2], "status": "closed"}
        for row in sandbox.rows()[:count]
    ]


def run_against(sandbox: Sandbox, *args: str | Path, token: str | None = SECRET, **kwargs):  # type: ignore[no-untyped-def]
    """`mateo-bulk run ARGS` against the sandbox, unpaced, unless ARGS name another base URL."""
    base_url = [] if "--base-url" in args else ["--base-url", sandbox.base_url]
    return run_cli("run", *args, *base_url, "--rate", "unlimited", token=token, **kwargs)


def test_exit_0_when_every_row_is_updated(api: Sandbox, tmp_path: Path) -> None:
    """All rows updated: exit 0, the summary names the report, which has every row."""
    path = write_csv(tmp_path / "in.csv", some_rows(api, 8))
    result = run_against(api, path, "--run-dir", tmp_path / "run")
    assert result.returncode == 0, result.stderr
    assert "updated" in result.stdout and str(tmp_path / "run" / "report.csv") in result.stdout
    assert len(read_report(tmp_path / "run" / "report.csv")) == 8


def test_the_command_in_its_own_process_answers_as_in_the_tests_process(
    api: Sandbox, tmp_path: Path
) -> None:
    """The suite runs the CLI's main inside the test (tests.helpers.run_cli); a real
    `python -m pipeline` gives the same exit code, counts and messages: a run with a row not
    found (exit 1) and a usage error (exit 2)."""
    rows = [*some_rows(api, 2), {"conversation_id": UNKNOWN_ID, "status": "open"}]
    path = write_csv(tmp_path / "in.csv", rows)
    results = []
    for process in (True, False):
        api.reset()
        run_dir = tmp_path / f"run-{process}"
        results.append(run_against(api, path, "--run-dir", run_dir, process=process))
        assert [line["outcome"] for line in read_report(run_dir / "report.csv")] == [
            "updated",
            "updated",
            "not_found",
        ]
    assert [result.returncode for result in results] == [1, 1]
    counts = [[line for line in r.stdout.splitlines() if line.startswith("  ")] for r in results]
    assert counts[0] == counts[1] and counts[0]
    usage = [run_cli("run", "--rate", "fast", process=process) for process in (True, False)]
    assert [result.returncode for result in usage] == [2, 2]
    assert usage[0].stderr == usage[1].stderr and "--rate" in usage[0].stderr


def test_exit_1_when_some_rows_are_not_updated(api: Sandbox, tmp_path: Path) -> None:
    """A not_found and an invalid row: exit 1, the others still updated."""
    rows = some_rows(api, 3) + [
        {"conversation_id": UNKNOWN_ID, "status": "open"},
        {"conversation_id": "x", "status": "open"},
    ]
    result = run_against(api, write_csv(tmp_path / "in.csv", rows), "--run-dir", tmp_path / "r")
    assert result.returncode == 1, result.stderr
    outcomes = [line["outcome"] for line in read_report(tmp_path / "r" / "report.csv")]
    assert outcomes == ["updated"] * 3 + ["not_found", "invalid"]


def test_exit_3_and_a_clear_message_for_a_wrong_token(api: Sandbox, tmp_path: Path) -> None:
    """A wrong token: exit 3, rows skipped, the message says the token is not valid."""
    path = write_csv(tmp_path / "in.csv", some_rows(api, 10))
    result = run_against(api, path, "--batch-size", "1", "--run-dir", tmp_path / "r", token="nope")
    assert result.returncode == 3
    assert "token" in result.stderr and "not valid" in result.stderr
    assert "Traceback" not in result.stderr
    assert {line["outcome"] for line in read_report(tmp_path / "r" / "report.csv")} == {"skipped"}


def test_no_token_at_all_is_a_usage_error(api: Sandbox, tmp_path: Path) -> None:
    """Without MATEO_API_TOKEN or --token-file: exit 2 before anything is sent."""
    result = run_against(api, write_csv(tmp_path / "in.csv", some_rows(api, 2)), token=None)
    assert result.returncode == 2 and "MATEO_API_TOKEN" in result.stderr
    assert api.stats()["requests"] == 0


def test_token_file_is_read_and_a_loose_one_is_warned_about(api: Sandbox, tmp_path: Path) -> None:
    """--token-file works; a file readable by others gets a warning."""
    token_file = tmp_path / "token"
    token_file.write_text(SECRET + "\n")
    token_file.chmod(0o644)
    path = write_csv(tmp_path / "in.csv", some_rows(api, 2))
    result = run_against(
        api, path, "--token-file", token_file, "--run-dir", tmp_path / "r", token=None
    )
    assert result.returncode == 0, result.stderr
    assert "readable by other users" in result.stderr
    token_file.chmod(0o600)
    result = run_against(
        api, path, "--token-file", token_file, "--run-dir", tmp_path / "r2", token=None
    )
    assert result.returncode == 0 and "readable" not in result.stderr


def test_the_token_appears_in_no_output_and_no_file(api: Sandbox, tmp_path: Path) -> None:
    """A run with every outcome and some faults: the token is in no stream and no run file."""
    api.configure(fault_500=0.3, fault_seed=3)
    rows = some_rows(api, 20) + [
        {"conversation_id": UNKNOWN_ID, "status": "open"},
        {"conversation_id": "bad", "status": "open"},
        {
            "conversation_id": api.rows()[30]["id"],
            "inbox_id": "7f000000-0000-4000-8000-000000000000",
        },
    ]
    path = write_csv(tmp_path / "in.csv", rows)
    run_dir = tmp_path / "run"
    for report in ("report.csv", "report.jsonl", "report.parquet"):
        result = run_against(api, path, "--run-dir", run_dir, "--report", run_dir / report)
        assert SECRET not in result.stdout + result.stderr
    wrong = run_against(api, path, "--run-dir", tmp_path / "w", token=SECRET + "x")
    assert SECRET not in wrong.stdout + wrong.stderr
    for written in [*run_dir.rglob("*"), *(tmp_path / "w").rglob("*")]:
        if written.is_file():
            assert SECRET.encode() not in written.read_bytes(), written


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.csv"], "no such file"),
        (["--rate", "fast", "{input}"], "not a number"),
        (["--concurrency", "0", "{input}"], "at least 1"),
        (["--batch-size", "500", "{input}"], "at most 100"),
        (["--map", "colour=x", "{input}"], "colour"),
        (["--set", "status=done", "{input}"], "status"),
        (["--set", "inbox_id=null", "{input}"], "null"),
        (["--report", "out.xlsx", "{input}"], ".csv"),
        (["--base-url", "http://example.com/api/v1", "{input}"], "http"),
        (["--base-url", "nonsense", "{input}"], "base-url"),
        (["--map", "conversation_id=Nope", "{input}"], "Nope"),
        (["--frobnicate", "{input}"], "frobnicate"),
        (["{binary}"], "binary"),
        (["{empty}"], "empty"),
        (["{no_id}"], "conversation_id"),
    ],
)
def test_usage_and_input_errors_exit_2_with_one_line_and_send_nothing(
    api: Sandbox, tmp_path: Path, args: list[str], message: str
) -> None:
    """Every bad flag, value or file: exit 2, one line naming the problem, no request."""
    files = {
        "input": write_csv(tmp_path / "in.csv", some_rows(api, 3)),
        "invalid": write_csv(tmp_path / "bad.csv", [*some_rows(api, 2), {"conversation_id": "x"}]),
        "empty": tmp_path / "empty.csv",
        "binary": tmp_path / "binary.csv",
        "no_id": write_csv(tmp_path / "noid.csv", [{"status": "open"}], columns=("status",)),
    }
    files["empty"].write_bytes(b"")
    files["binary"].write_bytes(b"\x00\x01\x02PK\x03\x04" * 100)
    resolved = [argument.format(**{k: str(v) for k, v in files.items()}) for argument in args]
    result = run_against(api, *resolved, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message.lower() in lines[0].lower(), result.stderr
    assert api.stats()["requests"] == 0


def test_stdin_is_read_as_csv(api: Sandbox, tmp_path: Path) -> None:
    """`-` reads CSV from stdin."""
    rows = some_rows(api, 4)
    text = "conversation_id,status\n" + "".join(f"{row['conversation_id']},open\n" for row in rows)
    result = run_against(api, "-", "--run-dir", tmp_path / "r", stdin=text.encode())
    assert result.returncode == 0, result.stderr
    assert all(api.row(row["conversation_id"])["status"] == "open" for row in rows)


def test_dry_run_needs_no_token_and_sends_nothing(api: Sandbox, tmp_path: Path) -> None:
    """--dry-run: exit 0, rows `planned`, no request."""
    path = write_csv(tmp_path / "in.csv", some_rows(api, 5))
    result = run_against(api, path, "--dry-run", "--run-dir", tmp_path / "r", token=None)
    assert result.returncode == 0, result.stderr
    assert {line["outcome"] for line in read_report(tmp_path / "r" / "report.csv")} == {"planned"}
    assert api.stats()["requests"] == 0


@pytest.mark.long
def test_the_demo_runs_against_the_bundled_sandbox(tmp_path: Path) -> None:
    """`run --sandbox sample_data/reassign.csv`: every outcome shows, exit 1, at 2 requests/s."""
    sample = SAMPLE / "reassign.csv"
    if not sample.exists():
        pytest.skip("sample_data/reassign.csv is not there yet")
    result = run_cli("run", "--sandbox", sample, "--run-dir", tmp_path / "demo", "--quiet")
    assert result.returncode == 1, result.stderr
    outcomes = {line["outcome"] for line in read_report(tmp_path / "demo" / "report.csv")}
    assert {"updated", "not_found", "rejected", "invalid"} <= outcomes


def test_json_logs_carry_the_token_file_warning_as_an_event(api: Sandbox, tmp_path: Path) -> None:
    """--log-format json: the loose-token-file warning is a JSON event; stderr is JSON only."""
    import json

    token_file = tmp_path / "token"
    token_file.write_text(SECRET)
    token_file.chmod(0o644)
    path = write_csv(tmp_path / "in.csv", some_rows(api, 2))
    result = run_against(
        api,
        path,
        "--token-file",
        token_file,
        "--log-format",
        "json",
        "--run-dir",
        tmp_path / "r",
        token=None,
    )
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines() if line.strip()]
    assert any(event["event"] == "warning" and "chmod 600" in event["message"] for event in events)
    assert SECRET not in result.stderr


def test_run_starts_at_the_batch_size_doctor_stored(api: Sandbox, tmp_path: Path) -> None:
    """The CLI passes the stored doctor answers in: the run starts at their batch size (7 rows
    a PATCH, not 50) and says so."""
    store_answers(
        SECRET,
        {
            "format": 2,
            "base_url": api.base_url,
            "checked_at": "2026-01-02T03:04:05+00:00",
            "answers": {"recommended_batch_size": 7},
        },
    )
    path = write_csv(tmp_path / "in.csv", some_rows(api, 14))
    result = run_against(api, path, "--run-dir", tmp_path / "r", "--no-snapshot")
    assert result.returncode == 0, result.stderr
    assert (
        "batch size 7 (not 50): what `mateo-bulk doctor` found this API accepts on "
        "2026-01-02T03:04:05+00:00"
    ) in result.stdout + result.stderr
    assert api.stats()["requests_by_method"].get("PATCH") == 2
