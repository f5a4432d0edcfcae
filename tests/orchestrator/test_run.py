"""`run` (the Python API) against the sandbox over loopback: outcomes, retries, answer shapes."""

from __future__ import annotations

import io
import json
import os
import signal
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from trio.testing import MockClock

from pipeline.api.account import load_answers, store_answers
from pipeline.core.errors import InputError
from pipeline.core.models import Outcome
from pipeline.orchestrator.runner import RunSettings, resume, run, run_async
from pipeline.orchestrator.summary import RunSummary
from pipeline.sandbox import (
    Sandbox,
    SandboxConfig,
    SandboxState,
    create_app,
    default_dataset,
)
from tests.helpers import AGENTS, INBOXES, read_report, write_csv

UNKNOWN_ID = "00000000-0000-4000-8000-000000000001"


def settings_for(sandbox: Sandbox, input_path: Path, **overrides: Any) -> RunSettings:
    values: dict[str, Any] = {
        "input": input_path,
        "token": sandbox.token,
        "base_url": sandbox.base_url,
        "rate": None,
        "timeout": 5.0,
        "run_dir": input_path.parent / "run",
        "max_group_wait": 0.05,
    }
    values.update(overrides)
    return RunSettings(**values)


def assert_table_has_targets(sandbox: Sandbox, report: list[dict[str, str]]) -> None:
    """Every row reported updated holds its target values in the sandbox's table."""
    table = {row["id"]: row for row in sandbox.rows()}
    for line in report:
        if line["outcome"] != "updated":
            continue
        current = table[line["conversation_id"]]
        for field in ("inbox_id", "assignee_id", "status"):
            target = line[f"target_{field}"]
            if target:
                assert current[field] == (None if target == "null" else target), line


def many_rows(sandbox: Sandbox, count: int) -> list[dict[str, str]]:
    """`count` rows to close and move, chosen among rows that are not closed yet."""
    ids = [row["id"] for row in sandbox.rows() if row["status"] != "closed"][:count]
    assert len(ids) == count
    return [
        {"conversation_id": conversation_id, "inbox_id": INBOXES[n % 3], "status": "closed"}
        for n, conversation_id in enumerate(ids)
    ]


def test_every_outcome_and_the_final_table(sandbox: Sandbox, tmp_path: Path) -> None:
    """updated, not_found, rejected (409), invalid, unchanged: each reported, table to match."""
    table = sandbox.rows()
    ids = [
        row["id"]
        for row in table
        if row["status"] not in ("closed", "archived")
        and row["assignee_id"] not in (None, AGENTS[0])
        and row["inbox_id"] != INBOXES[1]
    ]
    already = next(row for row in table if row["status"] == "archived")
    rows = [
        {"conversation_id": ids[0], "inbox_id": INBOXES[1], "status": "closed"},
        {"conversation_id": ids[1].upper(), "assignee_id": "NULL"},
        {"conversation_id": UNKNOWN_ID, "status": "closed"},
        {"conversation_id": ids[2], "inbox_id": "7f000000-0000-4000-8000-000000000000"},
        {"conversation_id": "not-a-uuid", "status": "closed"},
        {"conversation_id": ids[3], "status": "Archived"},
        {"conversation_id": ids[4], "assignee_id": AGENTS[0]},
        {"conversation_id": already["id"], "status": "archived"},
    ]
    summary = run(settings_for(sandbox, write_csv(tmp_path / "in.csv", rows)))
    report = read_report(summary.report_path)
    assert [line["outcome"] for line in report] == [
        "updated",
        "updated",
        "not_found",
        "rejected",
        "invalid",
        "updated",
        "updated",
        "unchanged",
    ]
    assert [int(line["row"]) for line in report] == list(range(1, 9))
    assert report[3]["http_status"] == "409" and report[3]["error_code"] == "23503"
    assert "not a uuid" in report[4]["error_message"]
    assert report[1]["returned_assignee_id"] == "null"
    assert summary.exit_code == 1
    assert_table_has_targets(sandbox, report)
    assert sandbox.row(ids[1])["assignee_id"] is None


def test_all_updated_exits_zero_and_groups_rows(sandbox: Sandbox, tmp_path: Path) -> None:
    """120 rows over 3 targets: all updated, exit 0, at most one partial group per target."""
    rows = many_rows(sandbox, 120)
    summary = run(settings_for(sandbox, write_csv(tmp_path / "in.csv", rows), snapshot=False))
    assert summary.counts[Outcome.UPDATED] == 120 and summary.exit_code == 0
    assert sandbox.stats()["requests_by_method"]["PATCH"] == summary.requests <= 3
    assert_table_has_targets(sandbox, read_report(summary.report_path))


def test_batch_size_one_sends_one_eq_patch_per_row(sandbox: Sandbox, tmp_path: Path) -> None:
    """--batch-size 1: one request per row."""
    rows = many_rows(sandbox, 12)
    summary = run(
        settings_for(sandbox, write_csv(tmp_path / "in.csv", rows), batch_size=1, snapshot=False)
    )
    assert summary.requests == 12 and summary.counts[Outcome.UPDATED] == 12


def test_identical_duplicates_are_sent_once_and_reported_twice(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """The same row twice: one id in the request, both rows `updated`."""
    conversation_id = next(row["id"] for row in sandbox.rows() if row["status"] != "archived")
    rows = [{"conversation_id": conversation_id, "status": "archived"}] * 2
    summary = run(settings_for(sandbox, write_csv(tmp_path / "in.csv", rows), snapshot=False))
    assert [line["outcome"] for line in read_report(summary.report_path)] == ["updated"] * 2
    assert summary.requests == 1
    assert sandbox.stats()["ids_updated_more_than_once"] == {}


@pytest.mark.usefixtures("short_backoff")
@pytest.mark.parametrize(
    "fault",
    [
        {"fault_500": 0.4},
        {"fault_502": 0.4},
        {"fault_503": 0.4, "fault_503_retry_after": 0},
        {"fault_drop": 0.4},
        {"fault_applied_503": 0.4, "fault_503_retry_after": 0},
        {"fault_slow": 0.3, "slow_seconds": 5.0},
        {"cutoff_seconds": 0.05, "latency_ms": 60, "latency_distribution": "exponential"},
    ],
    ids=["500", "502-html", "503-retry-after", "drop", "applied-then-503", "slow", "cutoff"],
)
def test_retries_under_each_fault_end_with_every_row_right(
    sandbox: Sandbox, tmp_path: Path, fault: dict[str, Any]
) -> None:
    """Under each fault every row ends updated, some after retries, the table matches."""
    sandbox.configure(fault_seed=7, **fault)
    rows = many_rows(sandbox, 40)
    summary = run(
        settings_for(
            sandbox, write_csv(tmp_path / "in.csv", rows), batch_size=5, max_attempts=8, timeout=0.5
        )
    )
    report = read_report(summary.report_path)
    assert summary.counts[Outcome.UPDATED] == 40, summary.counts
    assert summary.retries > 0
    assert any(int(line["attempts"]) > 1 for line in report)
    assert_table_has_targets(sandbox, report)


def test_retries_exhausted_is_failed_with_the_last_error(sandbox: Sandbox, tmp_path: Path) -> None:
    """A server that always answers 500: rows `failed` after --max-attempts, exit 1."""
    sandbox.configure(fault_500=1.0)
    summary = run(
        settings_for(
            sandbox,
            write_csv(tmp_path / "in.csv", many_rows(sandbox, 3)),
            max_attempts=2,
            snapshot=False,
        )
    )
    report = read_report(summary.report_path)
    assert {line["outcome"] for line in report} == {"failed"}
    assert {line["attempts"] for line in report} == {"2"}
    assert {line["http_status"] for line in report} == {"500"}
    assert summary.exit_code == 1


@pytest.mark.long
def test_rate_limit_429s_are_retried_after_retry_after(sandbox: Sandbox, tmp_path: Path) -> None:
    """Against a 5 req/s limit, an unpaced client meets 429s, waits and still updates all."""
    sandbox.configure(rate=5.0, burst=1)
    summary = run(
        settings_for(sandbox, write_csv(tmp_path / "in.csv", many_rows(sandbox, 12)), batch_size=1)
    )
    assert summary.counts[Outcome.UPDATED] == 12
    assert sandbox.stats()["rate_limited"] > 0


def test_paced_at_the_limit_meets_no_429(tmp_path: Path) -> None:
    """--rate equal to the server's limit (burst 1): no request is refused.

    The run and the sandbox share one event loop on a virtual clock (trio's MockClock), which
    is also the clock of the sandbox's token bucket: on real time over loopback, a machine busy
    with other work delays one request's arrival more than the next one's, and the bucket sees
    two requests closer together than the pacer sent them.
    """
    config = SandboxConfig(rate=10.0, burst=1)
    rows = [row for row in default_dataset().rows if row["status"] != "closed"][:20]
    assert len(rows) == 20
    lines = [
        {"conversation_id": str(row["id"]), "inbox_id": INBOXES[n % 3], "status": "closed"}
        for n, row in enumerate(rows)
    ]
    settings = RunSettings(
        input=write_csv(tmp_path / "in.csv", lines),
        token=config.token,
        base_url="http://127.0.0.1/api/v1",  # never dialled: the transport is the app
        rate=10.0,
        timeout=5.0,
        run_dir=tmp_path / "run",
        max_group_wait=0.05,
        batch_size=1,
        concurrency=4,
    )

    async def main() -> tuple[RunSummary, dict[str, Any]]:
        state = SandboxState(default_dataset(), clock=anyio.current_time)
        transport = httpx.ASGITransport(app=create_app(config, state))
        return await run_async(settings, transport=transport), state.stats()

    summary, stats = anyio.run(
        main, backend="trio", backend_options={"clock": MockClock(autojump_threshold=0)}
    )
    assert summary.counts[Outcome.UPDATED] == 20
    assert stats["rate_limited"] == 0
    assert stats["safety_violations"] == 0


@pytest.mark.parametrize("status", [401, 403])
def test_a_bad_token_stops_the_run_and_skips_the_rest(
    sandbox: Sandbox, tmp_path: Path, status: int
) -> None:
    """401/403 stop at once: rows skipped, at most --concurrency requests sent, exit 3."""
    rows = many_rows(sandbox, 30)
    token = "" if status == 401 else "wrong-token"
    settings = settings_for(
        sandbox, write_csv(tmp_path / "in.csv", rows), batch_size=1, concurrency=2
    )
    if status == 401:
        # An empty token is refused before anything is sent; send a blank-ish header instead.
        settings = settings_for(
            sandbox, tmp_path / "in.csv", batch_size=1, concurrency=2, token="x"
        )
        sandbox.configure(token="other")
    else:
        settings = settings_for(
            sandbox, tmp_path / "in.csv", batch_size=1, concurrency=2, token=token
        )
    summary = run(settings)
    assert summary.exit_code == 3
    assert summary.counts[Outcome.SKIPPED] == 30
    assert sandbox.stats()["requests"] <= 2
    assert sandbox.stats()["updates"] == 0


@pytest.mark.parametrize(
    "switches",
    [
        {"object_response": "one"},
        {"object_response": "first"},
        {"select_returns_body": True, "drop_prefer": True},
        {"drop_prefer": True},
        {"drop_prefer": True, "drop_content_range": True},
        {"zero_match_404": True},
        {"force_single_object": True},
        {"max_url_length": 1000},
        {"default_status_open": True},
        {"error_body": "postgrest"},
    ],
    ids=lambda switches: ",".join(f"{key}={value}" for key, value in switches.items()),
)
def test_every_unknown_answer_shape_gives_the_right_outcomes(
    sandbox: Sandbox, tmp_path: Path, switches: dict[str, Any]
) -> None:
    """Under each proxy switch: updated rows updated, unknown ids not_found, 409 rejected."""
    sandbox.configure(**switches)
    rows = many_rows(sandbox, 60)
    rows += [
        {"conversation_id": UNKNOWN_ID, "inbox_id": INBOXES[0], "status": "closed"},
        {
            "conversation_id": sandbox.rows()[61]["id"],
            "inbox_id": "7f000000-0000-4000-8000-000000000000",
        },
    ]
    summary = run(settings_for(sandbox, write_csv(tmp_path / "in.csv", rows)))
    report = read_report(summary.report_path)
    outcomes = [line["outcome"] for line in report]
    assert outcomes == ["updated"] * 60 + ["not_found", "rejected"], summary.notices
    assert_table_has_targets(sandbox, report)
    assert summary.stopped is None


def test_no_match_answered_204_is_read_back(sandbox: Sandbox, tmp_path: Path) -> None:
    """With no body (Prefer dropped), the group is read back with one GET per 50 ids."""
    sandbox.configure(drop_prefer=True)
    rows = many_rows(sandbox, 10) + [{"conversation_id": UNKNOWN_ID, "status": "closed"}]
    summary = run(settings_for(sandbox, write_csv(tmp_path / "in.csv", rows)))
    stats = sandbox.stats()["requests_by_method"]
    assert stats["GET"] >= 1
    assert [line["outcome"] for line in read_report(summary.report_path)][-1] == "not_found"


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_report_formats_hold_the_same_rows(sandbox: Sandbox, tmp_path: Path, suffix: str) -> None:
    """--report's suffix picks the format; every format has every row and column."""
    import pandas

    rows = many_rows(sandbox, 5) + [{"conversation_id": UNKNOWN_ID, "status": "open"}]
    report_path = tmp_path / f"out{suffix}"
    run(settings_for(sandbox, write_csv(tmp_path / "in.csv", rows), report=report_path))
    if suffix == ".csv":
        frame = pandas.read_csv(report_path, dtype=str, keep_default_na=False)
    elif suffix == ".jsonl":
        frame = pandas.DataFrame(
            [json.loads(line) for line in report_path.read_text().splitlines()]
        )
    else:
        frame = pandas.read_parquet(report_path)
    assert list(frame["outcome"]) == ["updated"] * 5 + ["not_found"]
    assert {
        "row",
        "conversation_id",
        "http_status",
        "attempts",
        "error_code",
        "error_message",
        "target_status",
        "returned_status",
    } <= set(frame.columns)


def test_dry_run_sends_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    """--dry-run validates and reports `planned`, with no request at all."""
    summary = run(
        settings_for(sandbox, write_csv(tmp_path / "in.csv", many_rows(sandbox, 10)), dry_run=True)
    )
    assert summary.counts[Outcome.PLANNED] == 10 and summary.exit_code == 0
    assert sandbox.stats()["requests"] == 0


def test_fixed_values_and_column_map(sandbox: Sandbox, tmp_path: Path) -> None:
    """A file of ids only, with `--map conversation_id=Ticket` and `--set status=closed`."""
    ids = [row["id"] for row in sandbox.rows() if row["status"] != "closed"][:5]
    path = write_csv(tmp_path / "ids.csv", [{"Ticket": i} for i in ids], columns=("Ticket",))
    summary = run(
        settings_for(
            sandbox,
            path,
            column_map={"conversation_id": "Ticket"},
            fixed_values={"status": "closed"},
        )
    )
    assert summary.counts[Outcome.UPDATED] == 5
    assert all(sandbox.row(i)["status"] == "closed" for i in ids)


def test_a_value_other_than_the_target_is_reported_as_a_difference(tmp_path: Path) -> None:
    """A server that answers with another value than the one sent: `difference`, exit 1."""
    conversation_id = "3c90c3cc-0d44-4b50-8888-8dd25736052a"

    def handler(request: httpx.Request) -> httpx.Response:
        row = {"id": conversation_id, "inbox_id": INBOXES[0], "assignee_id": None, "status": "open"}
        return httpx.Response(200, json=[row])

    path = write_csv(
        tmp_path / "in.csv", [{"conversation_id": conversation_id, "status": "closed"}]
    )
    summary = run(
        RunSettings(
            path,
            token="t",
            base_url="https://api.example.test/api/v1",
            rate=None,
            run_dir=tmp_path / "run",
        ),
        transport=httpx.MockTransport(handler),
    )
    (line,) = read_report(summary.report_path)
    assert line["outcome"] == "updated" and line["difference"] == "status: closed -> open"
    assert summary.exit_code == 1


def test_rows_the_request_did_not_name_stop_the_run(tmp_path: Path) -> None:
    """An answer naming a conversation we did not ask for stops the run (exit 4)."""
    asked = "3c90c3cc-0d44-4b50-8888-8dd25736052a"
    stranger = "3c90c3cc-0d44-4b50-8888-8dd25736052f"

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, json=[{"id": asked, "status": "closed"}, {"id": stranger, "status": "closed"}]
        )

    path = write_csv(tmp_path / "in.csv", [{"conversation_id": asked, "status": "closed"}])
    summary: RunSummary = run(
        RunSettings(
            path,
            token="t",
            base_url="https://api.example.test/api/v1",
            rate=None,
            run_dir=tmp_path / "run",
        ),
        transport=httpx.MockTransport(handler),
    )
    assert summary.exit_code == 4
    assert stranger in str(summary.stopped)


def test_a_guard_leaves_rows_that_no_longer_match_alone(sandbox: Sandbox, tmp_path: Path) -> None:
    """With guard status=eq.open, a closed row is `conflict` with its current values, unchanged."""
    rows = sandbox.rows()
    open_ids = [row["id"] for row in rows if row["status"] == "open"][:3]
    closed_id = next(row["id"] for row in rows if row["status"] == "closed")
    target = INBOXES[4]
    lines = [{"conversation_id": i, "inbox_id": target} for i in [*open_ids, closed_id]]
    lines.append({"conversation_id": UNKNOWN_ID, "inbox_id": target})
    before = sandbox.row(closed_id)
    summary = run(
        settings_for(
            sandbox, write_csv(tmp_path / "in.csv", lines), query_guard={"status": "eq.open"}
        )
    )
    report = read_report(summary.report_path)
    assert [line["outcome"] for line in report] == ["updated"] * 3 + ["conflict", "not_found"]
    assert report[3]["returned_status"] == "closed"
    assert sandbox.row(closed_id)["inbox_id"] == before["inbox_id"]
    assert all(sandbox.row(i)["inbox_id"] == target for i in open_ids)
    assert summary.exit_code == 1


# --- process state: a library run changes none unless asked -----------------------------------


def test_library_run_installs_no_signal_handler_and_leaves_os_environ_unchanged(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """`run()` from Python leaves SIGINT/SIGTERM and os.environ as it found them, during the
    run and after; `handle_signals=True` (what the CLI passes) is what installs the handlers.

    During any `anyio.run`, asyncio's own runner turns SIGINT into a KeyboardInterrupt as
    Python does (and puts the handler back after): SIGTERM, which a run handling signals takes
    with SIGINT, is what shows whether the run installed any.
    """
    signals = (signal.SIGINT, signal.SIGTERM)
    handlers = {signum: signal.getsignal(signum) for signum in signals}
    environment = dict(os.environ)
    seen: list[Any] = []

    def on_progress(progress: Any) -> None:
        seen.append(signal.getsignal(signal.SIGTERM))

    rows = many_rows(sandbox, 60)
    summary = run(
        settings_for(sandbox, write_csv(tmp_path / "in.csv", rows), batch_size=5),
        on_progress=on_progress,
    )
    assert summary.counts[Outcome.UPDATED] == 60
    assert len(seen) > 1 and all(during == handlers[signal.SIGTERM] for during in seen)
    assert {signum: signal.getsignal(signum) for signum in signals} == handlers
    assert dict(os.environ) == environment

    # The same observation sees the handlers a run asked to handle signals installs.
    seen.clear()
    again = tmp_path / "again"
    again.mkdir()
    run(
        settings_for(sandbox, write_csv(again / "in.csv", many_rows(sandbox, 60)), batch_size=5),
        on_progress=on_progress,
        handle_signals=True,
    )
    assert any(during != handlers[signal.SIGTERM] for during in seen)
    assert {signum: signal.getsignal(signum) for signum in signals} == handlers


def test_library_run_reads_stdin_only_when_given_it(sandbox: Sandbox, tmp_path: Path) -> None:
    """Input "-" without `stdin=` is refused before anything is made or sent; with it, the
    rows are kept in the run directory (stdin.csv) and run."""
    with pytest.raises(InputError, match="stdin"):
        run(settings_for(sandbox, tmp_path / "unused.csv", input="-"))
    assert not (tmp_path / "run").exists() and sandbox.stats()["requests"] == 0
    piped = write_csv(tmp_path / "piped.csv", many_rows(sandbox, 4)).read_bytes()
    summary = run(
        settings_for(sandbox, tmp_path / "unused.csv", input="-"), stdin=io.BytesIO(piped)
    )
    assert summary.counts[Outcome.UPDATED] == 4
    assert (tmp_path / "run" / "stdin.csv").read_bytes() == piped


def test_stored_doctor_answers_are_used_only_when_passed_in(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """A library run starts at its own batch size; given the stored answers' lookup (as the CLI
    gives it), at the doctor's, with the notice saying so."""
    store_answers(
        sandbox.token,
        {
            "format": 2,
            "base_url": sandbox.base_url,
            "checked_at": "2026-01-02T03:04:05+00:00",
            "answers": {"recommended_batch_size": 7},
        },
    )
    plain = run(settings_for(sandbox, write_csv(tmp_path / "in.csv", many_rows(sandbox, 14))))
    assert not any("mateo-bulk doctor" in notice for notice in plain.notices)
    asked = tmp_path / "asked"
    asked.mkdir()
    summary = run(
        settings_for(sandbox, write_csv(asked / "in.csv", many_rows(sandbox, 14))),
        stored_answers=load_answers,
    )
    assert (
        "batch size 7 (not 50): what `mateo-bulk doctor` found this API accepts on "
        "2026-01-02T03:04:05+00:00"
    ) in summary.notices


def test_a_misspelt_process_keyword_is_a_type_error_and_nothing_is_sent(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """`handle_signal=True` (no s) would leave Ctrl-C unhandled if it were let through: the
    process keywords are checked as Python checks any keyword, by run, resume and run_job."""
    path = write_csv(tmp_path / "in.csv", many_rows(sandbox, 2))
    with pytest.raises(TypeError, match="handle_signal"):
        run(settings_for(sandbox, path), handle_signal=True)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="stdin"):
        resume(tmp_path / "run", token=sandbox.token, stdin=io.BytesIO())  # type: ignore[call-arg]
    assert sandbox.stats()["requests"] == 0 and not (tmp_path / "run").exists()
