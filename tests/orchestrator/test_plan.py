"""See before you write: plan, apply, unchanged rows, guarded updates and undo."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import httpx

from pipeline.core.models import Outcome
from pipeline.orchestrator.runner import RunSettings, apply_plan, run
from pipeline.sandbox import Sandbox
from tests.helpers import INBOXES, read_report, run_cli, write_csv

UNKNOWN_ID = "00000000-0000-4000-8000-000000000001"


def settings(sandbox: Sandbox, path: Path, run_dir: Path, **overrides: Any) -> RunSettings:
    values: dict[str, Any] = {
        "token": sandbox.token,
        "base_url": sandbox.base_url,
        "rate": None,
        "run_dir": run_dir,
    }
    return RunSettings(path, **{**values, **overrides})


def table_without_timestamps(sandbox: Sandbox) -> dict[str, dict[str, Any]]:
    return {
        row["id"]: {key: value for key, value in row.items() if key != "updated_at"}
        for row in sandbox.rows()
    }


def sandbox_patch(sandbox: Sandbox, conversation_id: str, body: dict[str, Any]) -> None:
    """Another writer changes a conversation behind our back."""
    response = httpx.patch(
        f"{sandbox.base_url}/conversation?id=eq.{conversation_id}",
        json=body,
        headers={"Authorization": f"Bearer {sandbox.token}"},
    )
    assert response.status_code == 204


def mixed_job(sandbox: Sandbox, tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """12 rows to move to the Billing inbox: 8 that must move, 4 already there, 1 unknown."""
    target = INBOXES[1]
    rows = sandbox.rows()
    moving = [row for row in rows if row["inbox_id"] != target][:8]
    staying = [row for row in rows if row["inbox_id"] == target][:4]
    lines = [{"conversation_id": row["id"], "inbox_id": target} for row in moving + staying]
    lines.append({"conversation_id": UNKNOWN_ID, "inbox_id": target})
    expected = {row["id"]: "change" for row in moving}
    expected |= {row["id"]: "unchanged" for row in staying}
    expected[UNKNOWN_ID] = "not_found"
    return write_csv(tmp_path / "job.csv", lines), expected


def test_plan_matches_the_sandbox_and_changes_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    """The plan file holds each row's current values and decision; nothing is PATCHed."""
    path, expected = mixed_job(sandbox, tmp_path)
    before = table_without_timestamps(sandbox)
    summary = run(settings(sandbox, path, tmp_path / "plan", plan_only=True))
    assert sandbox.stats()["requests_by_method"] == {"GET": 1}
    assert table_without_timestamps(sandbox) == before
    assert summary.plan_path is not None
    with summary.plan_path.open() as file:
        plan = list(csv.DictReader(file))
    assert {line["conversation_id"]: line["decision"] for line in plan} == expected
    for line in plan:
        if line["decision"] in ("change", "unchanged"):
            assert line["before_inbox_id"] == before[line["conversation_id"]]["inbox_id"]
    moving = sum(1 for decision in expected.values() if decision == "change")
    assert sum(summary.transitions.values()) == moving
    assert summary.apply_requests >= 1


def test_apply_changes_only_the_change_rows(sandbox: Sandbox, tmp_path: Path) -> None:
    """apply PLAN sends exactly the plan's `change` rows, guarded; the rest is untouched."""
    path, expected = mixed_job(sandbox, tmp_path)
    plan = run(settings(sandbox, path, tmp_path / "plan", plan_only=True))
    before = table_without_timestamps(sandbox)
    sandbox.reset_stats()
    applied = apply_plan(plan.plan_path, settings(sandbox, path, tmp_path / "apply"))
    assert applied.exit_code == 0
    assert applied.counts[Outcome.UPDATED] == 8 and applied.total_rows == 8
    after = table_without_timestamps(sandbox)
    for conversation_id, row in after.items():
        if expected.get(conversation_id) == "change":
            assert row["inbox_id"] == INBOXES[1]
        else:
            assert row == before[conversation_id]
    assert sandbox.stats()["ids_updated"] == 8


def test_unchanged_rows_cost_no_patch(sandbox: Sandbox, tmp_path: Path) -> None:
    """run: rows already in their target state are `unchanged` and never PATCHed."""
    path, expected = mixed_job(sandbox, tmp_path)
    summary = run(settings(sandbox, path, tmp_path / "run", batch_size=1))
    report = read_report(summary.report_path)
    assert {line["conversation_id"]: line["outcome"] for line in report} == {
        key: {"change": "updated"}.get(value, value) for key, value in expected.items()
    }
    assert sandbox.stats()["requests_by_method"]["PATCH"] == 8
    assert sandbox.stats()["ids_updated"] == 8


def test_a_row_changed_between_plan_and_apply_is_a_conflict(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Someone moves a row after the plan: apply reports `conflict` and keeps their value."""
    path, expected = mixed_job(sandbox, tmp_path)
    plan = run(settings(sandbox, path, tmp_path / "plan", plan_only=True))
    victim = next(key for key, decision in expected.items() if decision == "change")
    sandbox_patch(sandbox, victim, {"inbox_id": INBOXES[3]})
    applied = apply_plan(plan.plan_path, settings(sandbox, path, tmp_path / "apply"))
    report = {line["conversation_id"]: line for line in read_report(applied.report_path)}
    assert report[victim]["outcome"] == "conflict"
    assert report[victim]["returned_inbox_id"] == INBOXES[3]
    assert sandbox.row(victim)["inbox_id"] == INBOXES[3]
    assert applied.counts[Outcome.UPDATED] == 7 and applied.exit_code == 1


def test_no_guard_overwrites_a_row_changed_meanwhile(sandbox: Sandbox, tmp_path: Path) -> None:
    """--no-guard: the same late change is overwritten (the user asked for it)."""
    path, expected = mixed_job(sandbox, tmp_path)
    plan = run(settings(sandbox, path, tmp_path / "plan", plan_only=True))
    victim = next(key for key, decision in expected.items() if decision == "change")
    sandbox_patch(sandbox, victim, {"inbox_id": INBOXES[3]})
    applied = apply_plan(plan.plan_path, settings(sandbox, path, tmp_path / "apply", guarded=False))
    assert applied.counts[Outcome.UPDATED] == 8
    assert sandbox.row(victim)["inbox_id"] == INBOXES[1]


def test_undo_restores_the_whole_table(sandbox: Sandbox, tmp_path: Path) -> None:
    """Running undo.csv puts every column of every row back as it was before the run."""
    rows = sandbox.rows()
    lines = [
        {
            "conversation_id": row["id"],
            "inbox_id": INBOXES[(n % 4) + 1],
            "status": "archived",
            "assignee_id": "null" if n % 3 == 0 else "",
        }
        for n, row in enumerate(rows[:60])
    ]
    before = table_without_timestamps(sandbox)
    summary = run(settings(sandbox, write_csv(tmp_path / "job.csv", lines), tmp_path / "run"))
    assert summary.exit_code == 0 and summary.undo_path is not None
    assert table_without_timestamps(sandbox) != before
    undone = run(settings(sandbox, summary.undo_path, tmp_path / "undo"))
    assert undone.exit_code == 0, undone.counts
    assert table_without_timestamps(sandbox) == before


def test_undo_after_a_later_change_leaves_that_change_alone(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """An undo row whose conversation changed after the run is `conflict`, not overwritten."""
    rows = [row for row in sandbox.rows() if row["status"] == "open"][:5]
    lines = [{"conversation_id": row["id"], "status": "closed"} for row in rows]
    summary = run(settings(sandbox, write_csv(tmp_path / "job.csv", lines), tmp_path / "run"))
    assert summary.undo_path is not None
    sandbox_patch(sandbox, rows[0]["id"], {"status": "archived"})
    result = run_cli(
        "run",
        summary.undo_path,
        "--base-url",
        sandbox.base_url,
        "--rate",
        "unlimited",
        "--run-dir",
        tmp_path / "undo",
        token=sandbox.token,
    )
    assert result.returncode == 1, result.stderr
    report = {
        line["conversation_id"]: line for line in read_report(tmp_path / "undo" / "report.csv")
    }
    assert report[rows[0]["id"]]["outcome"] == "conflict"
    assert sandbox.row(rows[0]["id"])["status"] == "archived"
    assert all(sandbox.row(row["id"])["status"] == "open" for row in rows[1:])


def test_plan_and_apply_commands(sandbox: Sandbox, tmp_path: Path) -> None:
    """`mateo-bulk plan` prints transitions and the apply command; `apply` applies it."""
    path, _ = mixed_job(sandbox, tmp_path)
    common = ["--base-url", sandbox.base_url, "--rate", "unlimited", "--quiet"]
    planned = run_cli("plan", path, *common, "--run-dir", tmp_path / "p", token=sandbox.token)
    assert planned.returncode == 1  # one row is not found
    assert "8 to change, 4 already there, 1 not found" in planned.stdout
    assert "inbox_id: " in planned.stdout and "x" in planned.stdout
    assert f"mateo-bulk apply {tmp_path / 'p' / 'plan.csv'}" in planned.stdout
    applied = run_cli(
        "apply",
        tmp_path / "p" / "plan.csv",
        *common,
        "--run-dir",
        tmp_path / "a",
        token=sandbox.token,
    )
    assert applied.returncode == 0, applied.stderr
    assert sandbox.stats()["ids_updated"] == 8
