"""The daily budget: a ledger shared by runs, stops that resume the next day, 429s."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest

from pipeline.api.account import load_answers
from pipeline.api.quota import QuotaExhausted, QuotaLedger, parse_reset_time
from pipeline.core.errors import InputError
from pipeline.core.models import Outcome
from pipeline.orchestrator.runner import RunSettings, resume, run
from pipeline.sandbox import Sandbox
from tests.helpers import SAMPLE, run_cli, write_csv


class FakeClock:
    """UTC time that only moves when told to."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def rows_for(sandbox: Sandbox, count: int, start: int = 0) -> list[dict[str, str]]:
    """Rows to archive, among those not archived yet (so each costs a PATCH)."""
    rows = [row for row in sandbox.rows() if row["status"] != "archived"]
    return [
        {"conversation_id": row["id"], "status": "archived"} for row in rows[start : start + count]
    ]


def test_the_ledger_refuses_past_the_budget_and_resets_the_next_day(tmp_path: Path) -> None:
    """take() counts requests per API day; past the quota it raises with the reset time."""
    clock = FakeClock(datetime(2026, 11, 27, 23, 0, tzinfo=UTC))
    ledger = QuotaLedger("t", daily_quota=25, path=tmp_path / "l.sqlite", clock=clock)
    for _ in range(25):
        ledger.take()
    with pytest.raises(QuotaExhausted) as caught:
        ledger.take()
    assert caught.value.resets_at == datetime(2026, 11, 28, 0, 0, tzinfo=UTC)
    assert "resets at 2026-11-28 00:00 UTC" in str(caught.value)
    clock.now += timedelta(hours=1, seconds=1)
    ledger.take()
    assert ledger.budget().used == 1
    ledger.close()


def test_two_ledgers_of_one_account_share_the_budget_and_give_back_what_they_hold(
    tmp_path: Path,
) -> None:
    """Two runs on one day: together they never pass the quota; unused blocks return."""
    path = tmp_path / "l.sqlite"
    first = QuotaLedger("t", daily_quota=30, path=path)
    second = QuotaLedger("t", daily_quota=30, path=path)
    other_account = QuotaLedger("u", daily_quota=30, path=path)
    taken = 0
    for ledger in [first, second] * 40:
        try:
            ledger.take()
            taken += 1
        except QuotaExhausted:
            pass
    assert taken == 30
    other_account.take()  # another token's budget is its own
    first.close()
    second.close()
    reader = QuotaLedger("t", daily_quota=30, path=path)
    assert reader.budget().used == 30
    reader.close()
    partial = QuotaLedger("u", daily_quota=30, path=path)
    assert partial.budget().used == 30  # the block other_account took but had not closed
    other_account.close()
    assert partial.budget().used == 1
    partial.close()


def test_the_day_starts_at_the_configured_utc_time(tmp_path: Path) -> None:
    """--quota-reset-utc 07:30: 07:29 belongs to the previous day's budget."""
    clock = FakeClock(datetime(2026, 11, 27, 7, 29, tzinfo=UTC))
    ledger = QuotaLedger(
        "t", daily_quota=1, reset_at=parse_reset_time("07:30"), path=tmp_path / "l", clock=clock
    )
    ledger.take()
    with pytest.raises(QuotaExhausted):
        ledger.take()
    clock.now = clock.now.replace(minute=30)
    ledger.take()
    ledger.close()
    with pytest.raises(InputError):
        parse_reset_time("7h30")
    assert parse_reset_time("23:59") == time(23, 59, tzinfo=UTC)


def test_a_run_that_meets_its_budget_stops_and_resumes_the_next_day(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Budget 5, 9 rows one per request: exit 3 after 5; resumed the next day, all updated."""
    clock = FakeClock(datetime(2026, 11, 27, 22, 0, tzinfo=UTC))
    path = write_csv(tmp_path / "in.csv", rows_for(sandbox, 9))
    settings = RunSettings(
        path,
        token=sandbox.token,
        base_url=sandbox.base_url,
        rate=None,
        batch_size=1,
        daily_quota=5,
        run_dir=tmp_path / "run",
        quota_clock=clock,
        snapshot=False,
    )
    stopped = run(settings)
    assert stopped.exit_code == 3
    assert isinstance(stopped.stopped, QuotaExhausted)
    assert "resets at 2026-11-28 00:00 UTC" in str(stopped.stopped)
    assert sandbox.stats()["requests"] == 5 and stopped.counts[Outcome.UPDATED] == 5
    assert stopped.counts[Outcome.SKIPPED] == 4

    again = resume(tmp_path / "run", token=sandbox.token, quota_clock=clock)
    assert again.exit_code == 3 and sandbox.stats()["requests"] == 5  # still the same day

    clock.now += timedelta(hours=2)
    finished = resume(tmp_path / "run", token=sandbox.token, quota_clock=clock)
    assert finished.exit_code == 0 and finished.counts[Outcome.UPDATED] == 9
    assert sandbox.stats()["requests"] == 9


def test_two_runs_in_one_day_share_one_budget(sandbox: Sandbox, tmp_path: Path) -> None:
    """A first run spends 6 of 8; the second, another file, gets only the 2 left."""
    common = {
        "token": sandbox.token,
        "base_url": sandbox.base_url,
        "rate": None,
        "batch_size": 1,
        "daily_quota": 8,
        "snapshot": False,
    }
    first = run(
        RunSettings(
            write_csv(tmp_path / "a.csv", rows_for(sandbox, 6)), run_dir=tmp_path / "a", **common
        )
    )
    assert first.exit_code == 0
    second = run(
        RunSettings(
            write_csv(tmp_path / "b.csv", rows_for(sandbox, 6, start=10)),
            run_dir=tmp_path / "b",
            **common,
        )
    )
    assert second.exit_code == 3 and second.counts[Outcome.UPDATED] == 2
    assert sandbox.stats()["requests"] == 8


def test_max_requests_bounds_one_run(sandbox: Sandbox, tmp_path: Path) -> None:
    """--max-requests 3: the run stops after 3 requests, resumable."""
    path = write_csv(tmp_path / "in.csv", rows_for(sandbox, 10))
    result = run_cli(
        "run",
        path,
        "--base-url",
        sandbox.base_url,
        "--rate",
        "unlimited",
        "--batch-size",
        "1",
        "--max-requests",
        "3",
        "--run-dir",
        tmp_path / "r",
        token=sandbox.token,
    )
    assert result.returncode == 3, result.stderr
    assert "--max-requests 3" in result.stderr and "mateo-bulk resume" in result.stderr
    assert sandbox.stats()["requests"] == 3


def test_a_429_with_a_long_retry_after_stops_and_resumes_after_the_reset(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """The server's daily limit (429, Retry-After of hours): exit 3, no storm; resume later."""
    sandbox.configure(daily_quota=4)
    path = write_csv(tmp_path / "in.csv", rows_for(sandbox, 6))
    settings = RunSettings(
        path,
        token=sandbox.token,
        base_url=sandbox.base_url,
        rate=None,
        batch_size=1,
        concurrency=1,
        run_dir=tmp_path / "run",
        snapshot=False,
    )
    stopped = run(settings)
    assert stopped.exit_code == 3 and "--max-wait" in str(stopped.stopped)
    assert sandbox.stats()["rate_limited"] <= 1  # stopped at the first sign, no storm
    sandbox.advance_day()
    finished = resume(tmp_path / "run", token=sandbox.token)
    assert finished.exit_code == 0 and finished.counts[Outcome.UPDATED] == 6


@pytest.mark.long
def test_a_429_storm_brings_the_rate_down_and_every_row_through(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """An unpaced run against 5 req/s: 429s, the shared rate drops, every row is updated."""
    sandbox.configure(rate=5.0, burst=1)
    rates: list[float | None] = []
    path = write_csv(tmp_path / "in.csv", rows_for(sandbox, 15))
    summary = run(
        RunSettings(
            path,
            token=sandbox.token,
            base_url=sandbox.base_url,
            rate=None,
            batch_size=1,
            concurrency=4,
            run_dir=tmp_path / "run",
        ),
        on_progress=lambda progress: rates.append(progress.rate),
    )
    assert summary.counts[Outcome.UPDATED] == 15
    stats = sandbox.stats()
    assert 0 < stats["rate_limited"] < 15
    assert any(rate is not None and rate <= 5.0 for rate in rates)


def test_ratelimit_remaining_zero_holds_before_any_429(sandbox: Sandbox, tmp_path: Path) -> None:
    """With ratelimit-remaining sent, a paced client meets the window's end without a 429."""
    sandbox.configure(rate=4.0, burst=4)
    path = write_csv(tmp_path / "in.csv", rows_for(sandbox, 16))
    summary = run(
        RunSettings(
            path,
            token=sandbox.token,
            base_url=sandbox.base_url,
            rate=4.0,
            batch_size=1,
            concurrency=1,
            run_dir=tmp_path / "run",
        )
    )
    assert summary.counts[Outcome.UPDATED] == 16
    assert sandbox.stats()["rate_limited"] == 0


def test_dry_run_prints_the_request_plan(tmp_path: Path) -> None:
    """--dry-run: requests the run will cost, how long at --rate, the share of today's budget."""
    result = run_cli(
        "run", SAMPLE / "reassign.csv", "--dry-run", "--run-dir", tmp_path / "r", token="t"
    )
    assert result.returncode == 1  # the sample has invalid rows
    plan = next(line for line in result.stdout.splitlines() if line.startswith("plan:"))
    # The snapshot's reads count too: 2 GETs before the 6 PATCHes.
    assert "about 8 requests (2 snapshot reads, 6 PATCHes)" in plan and "at 2 requests/s" in plan
    assert "10,000 of 10,000 requests left" in plan


def test_dry_run_says_how_many_api_days_a_big_run_needs(tmp_path: Path) -> None:
    """Past the daily quota, the plan counts API days, not minutes at --rate."""
    result = run_cli(
        "run",
        SAMPLE / "reassign.csv",
        "--dry-run",
        "--daily-quota",
        "3",
        "--run-dir",
        tmp_path / "r",
        token="t",
    )
    plan = next(line for line in result.stdout.splitlines() if line.startswith("plan:"))
    assert "3 API days at 3 requests a day" in plan


def test_a_run_starts_at_the_batch_size_doctor_found(sandbox: Sandbox, tmp_path: Path) -> None:
    """After `doctor` found grouped PATCHes refused (406), a run sends one row per request
    from the start: no request is spent finding out again."""
    import anyio

    from pipeline.commands.doctor.diagnosis import diagnose

    sandbox.configure(force_single_object=True)
    report = anyio.run(lambda: diagnose(sandbox.base_url, sandbox.token, rate=50.0))
    assert report.answers["recommended_batch_size"] == 1
    sandbox.reset_stats()
    path = write_csv(tmp_path / "in.csv", rows_for(sandbox, 6))
    summary = run(
        RunSettings(
            path,
            token=sandbox.token,
            base_url=sandbox.base_url,
            rate=None,
            snapshot=False,
            run_dir=tmp_path / "run",
        ),
        stored_answers=load_answers,  # what the CLI passes: a library run reads none unasked
    )
    assert summary.exit_code == 0 and summary.counts[Outcome.UPDATED] == 6
    assert "406" not in sandbox.stats()["requests_by_status"]
    assert sandbox.stats()["requests"] == 6
    assert any("mateo-bulk doctor" in notice for notice in summary.notices)
