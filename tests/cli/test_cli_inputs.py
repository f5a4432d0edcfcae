"""The bad-input corpus through the real CLI: one clear line and nothing sent, or the right rows."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from pipeline.sandbox import Sandbox
from tests.helpers import REPO, read_report, run_cli

CORPUS = REPO / "tests" / "data" / "bad_inputs"
EXPECTATIONS: dict[str, dict[str, Any]] = {
    name: expected
    for name, expected in json.loads((CORPUS / "expectations.json").read_text()).items()
    if not name.startswith("_")
}
REFUSED = sorted(name for name, case in EXPECTATIONS.items() if "exit" in case)
READ = sorted(name for name, case in EXPECTATIONS.items() if "rows" in case)


@pytest.fixture
def logged(sandbox: Sandbox, tmp_path: Path) -> Iterator[tuple[Sandbox, Path]]:
    """The shared sandbox, writing one JSON line per API request to a log of this test."""
    log = tmp_path / "requests.jsonl"
    sandbox.state.open_request_log(log, redact=sandbox.token)
    yield sandbox, log
    sandbox.state.close_request_log()


def run_file(sandbox: Sandbox, path: Path, run_dir: Path) -> Any:
    return run_cli(
        "run", path, "--base-url", sandbox.base_url, "--rate", "unlimited",
        "--run-dir", run_dir, "--quiet", token=sandbox.token, timeout=60,
    )  # fmt: skip


def requested_ids(log: Path) -> set[str]:
    """Every conversation id named by the id filter of a logged request."""
    ids: set[str] = set()
    for line in log.read_text().splitlines():
        query = parse_qs(urlsplit(json.loads(line)["path"]).query)
        for value in query.get("id", []):
            operator, _, operand = value.partition(".")
            names = operand.strip("()").split(",") if operator == "in" else [operand]
            ids.update(name.strip('"').lower() for name in names)
    return ids


def assert_one_clear_line(result: Any, message: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr


@pytest.mark.parametrize("name", REFUSED)
def test_a_refused_file_exits_2_with_one_line_and_sends_nothing(
    sandbox: Sandbox, tmp_path: Path, name: str
) -> None:
    """Each file refused as a whole: exit 2, one stderr line with the expected message, no
    traceback, no request."""
    result = run_file(sandbox, CORPUS / name, tmp_path / "run")
    assert_one_clear_line(result, EXPECTATIONS[name]["message_contains"])
    assert sandbox.stats()["requests"] == 0
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name", READ)
def test_a_read_file_reports_its_invalid_rows_and_sends_only_valid_ones(
    logged: tuple[Sandbox, Path], tmp_path: Path, name: str
) -> None:
    """Each file that is read: the report's invalid rows and reasons are the expected ones, and
    no request names an id outside the valid rows."""
    sandbox, log = logged
    expected = EXPECTATIONS[name]
    result = run_file(sandbox, CORPUS / name, tmp_path / "run")
    assert result.returncode in (0, 1), result.stderr
    assert "Traceback" not in result.stderr
    report = read_report(tmp_path / "run" / "report.csv")
    assert len(report) == expected["rows"]
    if "row_numbers" in expected:
        assert [int(line["row"]) for line in report] == expected["row_numbers"]
    invalid = {
        line["row"]: line["error_message"] for line in report if line["outcome"] == "invalid"
    }
    assert set(invalid) == set(expected["invalid_rows"])
    for row, reason in expected["invalid_rows"].items():
        assert reason in invalid[row]
    valid_ids = {line["conversation_id"].lower() for line in report if line["outcome"] != "invalid"}
    sent = requested_ids(log)
    assert sent <= valid_ids
    if valid_ids:
        assert sent, "the valid rows were never sent"


@pytest.mark.timeout(30)
def test_a_2gb_sparse_file_is_refused_fast_through_the_cli(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """A 2 GB sparse .csv (a header, then holes): exit 2 in under 10 s, one line, no request."""
    path = tmp_path / "huge.csv"
    path.write_bytes(b"conversation_id,status\n")
    os.truncate(path, 2 * 1024**3)
    started = time.monotonic()
    result = run_file(sandbox, path, tmp_path / "run")
    assert time.monotonic() - started < 10
    assert_one_clear_line(result, "contains NUL bytes")
    assert sandbox.stats()["requests"] == 0
