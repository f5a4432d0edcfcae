"""The whole pipeline against a hostile server: no false `updated`, no leak, no hang, no crash."""

from __future__ import annotations

import http.server
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from pipeline.core.errors import RunStopped, SafetyError
from pipeline.orchestrator.runner import RunSettings, run, run_async
from pipeline.orchestrator.summary import RunSummary
from pipeline.sandbox import Sandbox
from tests.helpers import read_report, run_cli, write_csv

SECRET = "tok-hostile-9d1c5e7a3b2f4a6c8e0d1f3a5b7c9e1d"

#: Faults after which nothing was committed: every row must end failed or rejected (a garbled
#: Retry-After has its own tests below).
NOTHING_COMMITTED = {
    "not-json": {"fault_not_json": 1.0},
    "object-wrapper": {"fault_object": 1.0, "fault_object_shape": "wrapper"},
    "huge-body": {"fault_huge_body": 1.0},
    "endless": {"fault_endless": 1.0},
    "redirect": {"fault_redirect": 1.0},
}


@pytest.fixture
def api(sandbox: Sandbox) -> Iterator[Sandbox]:
    """The shared sandbox (which fails a test after a safety violation) with a distinctive token."""
    sandbox.configure(token=SECRET)
    yield sandbox


def open_rows(sandbox: Sandbox, count: int) -> list[dict[str, str]]:
    """Rows that are open now, to be closed: an unchanged row is visibly not updated."""
    ids = [row["id"] for row in sandbox.rows() if row["status"] == "open"][:count]
    return [{"conversation_id": row_id, "status": "closed"} for row_id in ids]


def settings_for(sandbox: Sandbox, input_path: Path, **overrides: Any) -> RunSettings:
    values: dict[str, Any] = {
        "input": input_path,
        "token": sandbox.token,
        "base_url": sandbox.base_url,
        "rate": None,
        "timeout": 0.5,
        "max_attempts": 2,
        "batch_size": 5,
        "run_dir": input_path.parent / "run",
        "max_group_wait": 0.05,
    }
    values.update(overrides)
    return RunSettings(**values)


def run_rows(sandbox: Sandbox, tmp_path: Path, count: int, **overrides: Any) -> RunSummary:
    return run(
        settings_for(
            sandbox, write_csv(tmp_path / "in.csv", open_rows(sandbox, count)), **overrides
        )
    )


def outcomes(summary: RunSummary) -> Counter[str]:
    assert summary.report_path is not None
    return Counter(line["outcome"] for line in read_report(summary.report_path))


def assert_updated_only_if_applied(sandbox: Sandbox, summary: RunSummary) -> None:
    """Each row reported updated is closed in the table; each other row is still open."""
    assert summary.report_path is not None
    for line in read_report(summary.report_path):
        stored = sandbox.row(line["conversation_id"])
        assert stored is not None, line
        if line["outcome"] == "updated":
            assert stored["status"] == "closed" and not line["difference"], line
        else:
            assert line["outcome"] != "not_found", line


def assert_secret_nowhere(run_dir: Path, *streams: str) -> None:
    for stream in streams:
        assert SECRET not in stream
    for written in run_dir.rglob("*"):
        if written.is_file():
            assert SECRET.encode() not in written.read_bytes(), written


@pytest.mark.parametrize("fault", list(NOTHING_COMMITTED.values()), ids=list(NOTHING_COMMITTED))
def test_a_hostile_answer_every_time_ends_failed_or_rejected(
    api: Sandbox, tmp_path: Path, fault: dict[str, Any]
) -> None:
    """At probability 1 nothing is committed and no row ends updated or not_found."""
    api.configure(**fault)
    summary = run_rows(api, tmp_path, 12)
    assert set(outcomes(summary)) <= {"failed", "rejected"}, outcomes(summary)
    assert summary.exit_code == 1 and api.stats()["updates"] == 0
    assert_updated_only_if_applied(api, summary)
    assert_secret_nowhere(summary.run_dir)


@pytest.mark.usefixtures("short_backoff")
@pytest.mark.parametrize(
    "fault",
    [
        {"fault_not_json": 0.3},
        {"fault_object": 0.3, "fault_object_shape": "wrapper"},
        {"fault_huge_body": 0.3},
        {"fault_endless": 0.3},
        {"fault_not_json": 0.1, "fault_huge_body": 0.1, "fault_endless": 0.1, "fault_500": 0.1},
    ],
    ids=["not-json", "object-wrapper", "huge-body", "endless", "mixed"],
)
def test_retries_get_past_an_occasional_hostile_answer(
    api: Sandbox, tmp_path: Path, fault: dict[str, Any]
) -> None:
    """At 0.3 with retries every row ends updated, and only rows the table really holds."""
    api.configure(fault_seed=3, **fault)
    summary = run_rows(api, tmp_path, 16, batch_size=2, max_attempts=6, concurrency=2)
    assert outcomes(summary) == {"updated": 16} and summary.retries > 0
    assert_updated_only_if_applied(api, summary)


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers 200 to anything and remembers each request (line and headers)."""

    seen: list[tuple[str, str]]

    def _record(self) -> None:
        self.seen.append((self.requestline, str(self.headers)))
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"[]")

    do_GET = do_PATCH = do_POST = do_PUT = do_DELETE = _record

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def other_origin(api: Sandbox) -> Iterator[list[tuple[str, str]]]:
    """A server on 127.0.0.2 at the sandbox's own port: where the redirect fault points."""
    seen: list[tuple[str, str]] = []
    handler = type("Recorder", (_Recorder,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.2", api.port), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield seen
    server.shutdown()
    server.server_close()


def test_a_redirect_to_another_origin_is_not_followed(
    api: Sandbox, tmp_path: Path, other_origin: list[tuple[str, str]]
) -> None:
    """307 to 127.0.0.2: rows failed or rejected, naming the redirect; the other origin
    gets no request at all, so the token never reaches it."""
    api.configure(fault_redirect=1.0)
    summary = run_rows(api, tmp_path, 6, batch_size=1, max_attempts=3)
    report = read_report(summary.report_path)  # type: ignore[arg-type]
    assert {line["outcome"] for line in report} <= {"failed", "rejected"}
    assert all("redirect to http://127.0.0.2" in line["error_message"] for line in report)
    assert other_origin == []


def test_the_cli_says_no_to_a_redirect_and_keeps_the_token(
    api: Sandbox, tmp_path: Path, other_origin: list[tuple[str, str]]
) -> None:
    """The CLI against a redirecting server: exit 1, no traceback, the token in no stream or
    file, and nothing sent to the other origin."""
    api.configure(fault_redirect=1.0)
    path = write_csv(tmp_path / "in.csv", open_rows(api, 4))
    result = run_cli(
        "run", path, "--base-url", api.base_url, "--rate", "unlimited",
        "--run-dir", tmp_path / "run", "--quiet", token=SECRET,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    outcomes = {line["outcome"] for line in read_report(tmp_path / "run" / "report.csv")}
    assert outcomes <= {"failed", "rejected"}
    assert_secret_nowhere(tmp_path / "run", result.stdout, result.stderr)
    assert other_origin == []


def test_rows_not_asked_for_stop_the_run(api: Sandbox, tmp_path: Path) -> None:
    """An answer naming a row not in the request: safety stop (exit 4), the rest skipped, and
    the rows reported updated are exactly the ones the server committed."""
    api.configure(fault_foreign_rows=1.0)
    summary = run_rows(api, tmp_path, 20, batch_size=2, concurrency=1)
    assert isinstance(summary.stopped, SafetyError) and summary.exit_code == 4
    counts = outcomes(summary)
    assert counts["skipped"] >= 16 and set(counts) <= {"updated", "skipped"}
    assert counts["updated"] == api.stats()["updates"]
    assert_updated_only_if_applied(api, summary)


def test_the_cli_stops_on_foreign_rows_with_exit_4(api: Sandbox, tmp_path: Path) -> None:
    """The CLI: exit 4, the reason on stderr, no traceback, no token anywhere."""
    api.configure(fault_foreign_rows=1.0)
    path = write_csv(tmp_path / "in.csv", open_rows(api, 10))
    result = run_cli(
        "run", path, "--base-url", api.base_url, "--rate", "unlimited", "--batch-size", "2",
        "--concurrency", "1", "--run-dir", tmp_path / "run", "--quiet", token=SECRET,
    )  # fmt: skip
    assert result.returncode == 4, result.stderr
    assert "not in the request" in result.stderr and "Traceback" not in result.stderr
    assert "skipped" in {line["outcome"] for line in read_report(tmp_path / "run" / "report.csv")}
    assert_secret_nowhere(tmp_path / "run", result.stdout, result.stderr)


def test_the_cli_fails_rows_under_endless_and_huge_answers(api: Sandbox, tmp_path: Path) -> None:
    """The CLI under endless and 10 MB answers: rows failed, exit 1, bounded time, no leak."""
    api.configure(fault_endless=0.5, fault_huge_body=0.5, fault_seed=2)
    path = write_csv(tmp_path / "in.csv", open_rows(api, 6))
    started = time.monotonic()
    result = run_cli(
        "run", path, "--base-url", api.base_url, "--rate", "unlimited", "--timeout", "0.5",
        "--max-attempts", "2", "--run-dir", tmp_path / "run", "--quiet", token=SECRET,
    )  # fmt: skip
    assert time.monotonic() - started < 20
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert {line["outcome"] for line in read_report(tmp_path / "run" / "report.csv")} == {"failed"}
    assert_secret_nowhere(tmp_path / "run", result.stdout, result.stderr)
    assert api.stats()["updates"] == 0


def test_an_enormous_retry_after_stops_the_run_at_once(api: Sandbox, tmp_path: Path) -> None:
    """Retry-After of a year: more than --max-wait, so the run stops (exit 3) within seconds."""
    api.configure(fault_bad_retry_after=1.0, bad_retry_after="enormous")
    started = time.monotonic()
    summary = run_rows(api, tmp_path, 10)
    assert time.monotonic() - started < 10
    assert isinstance(summary.stopped, RunStopped) and summary.exit_code == 3
    assert "--max-wait" in str(summary.stopped)
    assert set(outcomes(summary)) == {"skipped"}


def test_a_malformed_retry_after_waits_a_bounded_time_then_updates(
    api: Sandbox, tmp_path: Path
) -> None:
    """A malformed Retry-After on every answer for a while: the run waits a bounded time and
    ends updated once the server recovers."""
    api.configure(fault_bad_retry_after=1.0, bad_retry_after="malformed")

    def recover() -> None:
        time.sleep(1.5)
        api.configure(fault_bad_retry_after=0.0)

    threading.Thread(target=recover, daemon=True).start()
    started = time.monotonic()
    summary = run_rows(api, tmp_path, 10, batch_size=10, max_attempts=8)
    assert time.monotonic() - started < 20
    assert outcomes(summary) == {"updated": 10} and summary.retries > 0
    assert_updated_only_if_applied(api, summary)


def test_the_cli_under_a_malformed_retry_after_is_bounded(api: Sandbox, tmp_path: Path) -> None:
    """The CLI with 429s whose Retry-After is garbage: finishes in bounded time, exit 1."""
    api.configure(fault_bad_retry_after=1.0, bad_retry_after="malformed")
    path = write_csv(tmp_path / "in.csv", open_rows(api, 4))
    started = time.monotonic()
    result = run_cli(
        "run", path, "--base-url", api.base_url, "--rate", "unlimited", "--max-attempts", "2",
        "--run-dir", tmp_path / "run", "--quiet", token=SECRET,
    )  # fmt: skip
    assert time.monotonic() - started < 20
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert {line["outcome"] for line in read_report(tmp_path / "run" / "report.csv")} == {"failed"}
    assert_secret_nowhere(tmp_path / "run", result.stdout, result.stderr)


# --- Bugs found: each test says what should happen, and fails until the fix is in. -------------


def test_an_absurd_retry_after_stops_the_run_without_a_traceback(
    api: Sandbox, tmp_path: Path
) -> None:
    """Retry-After 999999999999 s: the run stops like any long wait (exit 3), never crashes."""
    api.configure(fault_bad_retry_after=1.0, bad_retry_after="absurd")
    path = write_csv(tmp_path / "in.csv", open_rows(api, 4))
    result = run_cli(
        "run", path, "--base-url", api.base_url, "--rate", "unlimited",
        "--run-dir", tmp_path / "run", "--quiet", token=SECRET,
    )  # fmt: skip
    assert "Traceback" not in result.stderr
    assert result.returncode == 3


def test_wait_mode_does_not_wait_a_year_for_a_hostile_retry_after(
    api: Sandbox, tmp_path: Path
) -> None:
    """--wait and Retry-After of a year: the run still ends within seconds (stopped)."""
    api.configure(fault_bad_retry_after=1.0, bad_retry_after="enormous")
    settings = settings_for(api, write_csv(tmp_path / "in.csv", open_rows(api, 4)), wait=True)

    async def bounded() -> RunSummary | None:
        with anyio.move_on_after(2):
            return await run_async(settings)
        return None

    summary = anyio.run(bounded)
    assert summary is not None and summary.exit_code == 3


def test_one_object_for_a_group_never_gives_not_found_or_updated(
    api: Sandbox, tmp_path: Path
) -> None:
    """A PATCH and its read-back both answered with one unchanged row: no row updated or
    not_found, since nothing was applied and every row exists."""
    api.configure(fault_object=1.0, fault_object_shape="row")
    summary = run_rows(api, tmp_path, 10)
    assert api.stats()["updates"] == 0
    assert set(outcomes(summary)) <= {"failed", "rejected"}, outcomes(summary)


def test_a_200_naming_the_row_with_its_old_values_is_updated_with_a_difference(
    api: Sandbox, tmp_path: Path
) -> None:
    """A PATCH answered 200 with the row as it was: `updated` with the difference, exit 1.

    The contract (issue 3): an updated row whose returned values differ from the target is
    reported with that difference, never silently as success.
    """
    api.configure(fault_object=1.0, fault_object_shape="row")
    summary = run_rows(api, tmp_path, 3, batch_size=1, snapshot=False)
    assert api.stats()["updates"] == 0
    report = read_report(summary.report_path)
    assert {line["outcome"] for line in report} == {"updated"}
    assert all(line["difference"] for line in report)
    assert summary.exit_code == 1
