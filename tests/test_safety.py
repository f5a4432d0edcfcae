"""Confirmed safety defects, one test each: the fixed behaviour, against the real sandbox.

Each test runs the real CLI (or, where the CLI cannot reach the case, the library) against the
sandbox on loopback (or, for answers the sandbox cannot give, a small hostile HTTP server on
loopback) and asserts what the fixed tool must do: outcomes, exit codes, the table's contents,
the undo file, and no traceback.
"""

from __future__ import annotations

import csv
import http.server
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from pipeline.api.client import MateoClient
from pipeline.commands.job_file import load_job
from pipeline.commands.jobs import resolve_job
from pipeline.core.errors import InputError, SafetyError
from pipeline.core.models import ConversationIds, FieldValues
from pipeline.orchestrator.runner import RunSettings, apply_plan, run
from pipeline.sandbox import Sandbox, SandboxConfig
from tests.helpers import INBOXES, REPO, checked_sandbox, read_report, run_cli, write_csv

# --- Helpers -------------------------------------------------------------------------------------


def table(sandbox: Sandbox) -> dict[str, dict[str, Any]]:
    """The sandbox's conversations by id, without `updated_at` (it moves on every update)."""
    return {
        row["id"]: {key: value for key, value in row.items() if key != "updated_at"}
        for row in sandbox.rows()
    }


def cell(value: str | None) -> str:
    """A value as report and undo files write it: JSON null is `null`."""
    return "null" if value is None else value


def cli(sandbox: Sandbox, command: str, *args: Any, **kwargs: Any) -> Any:
    """`mateo-bulk COMMAND ARGS` against the sandbox, unpaced and quiet, the token in the env."""
    kwargs.setdefault("token", sandbox.token)
    return run_cli(
        command, *args, "--base-url", sandbox.base_url, "--rate", "unlimited", "--quiet",
        **kwargs,
    )  # fmt: skip


def assert_clean(result: Any) -> None:
    """The process wrote no traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    assert "Traceback" not in result.stdout, result.stdout


def outcomes_by_id(path: Path) -> dict[str, str]:
    return {line["conversation_id"]: line["outcome"] for line in read_report(path)}


def undo_by_id(run_dir: Path) -> dict[str, dict[str, str]]:
    path = run_dir / "undo.csv"
    if not path.exists():
        return {}
    return {line["conversation_id"]: line for line in read_report(path)}


def other_writer(sandbox: Sandbox, conversation_id: str, body: dict[str, Any]) -> None:
    """Someone else changes a conversation, straight through the API."""
    response = httpx.patch(
        f"{sandbox.base_url}/conversation",
        params={"id": f"eq.{conversation_id}"},
        json=body,
        headers={"Authorization": f"Bearer {sandbox.token}"},
    )
    assert response.status_code in (200, 204), response.text


def rows_where(sandbox: Sandbox, count: int, **values: str) -> list[dict[str, Any]]:
    rows = [
        row for row in sandbox.rows() if all(row[name] == value for name, value in values.items())
    ][:count]
    assert len(rows) == count
    return rows


def moving_job(sandbox: Sandbox, tmp_path: Path, count: int) -> tuple[Path, list[str]]:
    """`count` conversations of the first inbox, all to move to the second (one group)."""
    ids = [row["id"] for row in rows_where(sandbox, count, inbox_id=INBOXES[0])]
    path = write_csv(
        tmp_path / "job.csv", [{"conversation_id": i, "inbox_id": INBOXES[1]} for i in ids]
    )
    return path, ids


def assert_undo_holds_originals(
    undo: dict[str, dict[str, str]],
    original: dict[str, dict[str, Any]],
    ids: set[str],
    fields: tuple[str, ...],
) -> None:
    """Each of `ids` is in the undo file with its original values of `fields`."""
    missing = sorted(ids - set(undo))
    assert not missing, f"{len(missing)} changed rows are not in undo.csv, e.g. {missing[0]}"
    for conversation_id in ids:
        line = undo[conversation_id]
        for name in fields:
            assert line[name] == cell(original[conversation_id][name]), (name, line)


def resume_until_done(run_dir: Path, token: str, sessions: int = 8) -> Any:
    """`resume` as often as a per-session budget needs; every session without a traceback."""
    help_text = run_cli("resume", "--help").stdout
    budget = ("--max-requests", "1000") if "--max-requests" in help_text else ()
    result = None
    for _ in range(sessions):
        result = run_cli("resume", run_dir, "--quiet", *budget, token=token)
        assert_clean(result)
        if result.returncode != 3:
            break
    assert result is not None
    return result


# --- A. --base-url: what could turn a PATCH into an unfiltered one is refused ------------------


def _bad_base_urls(base: str) -> dict[str, str]:
    origin, _, path = base.partition("//")[2].partition("/")
    return {
        "fragment": f"http://{origin}/{path}#",
        "fragment-after-resource": f"http://{origin}/{path}/conversation#",
        "query": f"http://{origin}/{path}?x=1",
        "userinfo": f"http://user:pw@{origin}/{path}",
        "ftp": f"ftp://{origin}/{path}",
        "ends-in-resource": f"http://{origin}/{path}/conversation",
    }


BAD_BASE_URLS = list(_bad_base_urls("http://h:1/api/v1"))


@pytest.mark.parametrize("command", ["run", "doctor"])
@pytest.mark.parametrize("kind", BAD_BASE_URLS)
def test_a_bad_base_url_is_refused_before_anything_is_sent(
    sandbox: Sandbox, tmp_path: Path, command: str, kind: str
) -> None:
    """A: --base-url with a fragment, query, user info, non-http scheme or /conversation."""
    url = _bad_base_urls(sandbox.base_url)[kind]
    ids = [row["id"] for row in rows_where(sandbox, 3, status="open")]
    path = write_csv(tmp_path / "in.csv", [{"conversation_id": i, "status": "closed"} for i in ids])
    before = table(sandbox)
    if command == "run":
        args: tuple[Any, ...] = ("run", path, "--run-dir", tmp_path / "run", "--quiet")
    else:
        args = ("doctor",)
    result = run_cli(*args, "--base-url", url, token=sandbox.token)
    stats = sandbox.stats()
    assert stats["requests"] == 0, f"{url}: {stats['requests_by_method']} reached the sandbox"
    assert stats["safety_violations"] == 0
    assert table(sandbox) == before
    assert result.returncode == 2, (url, result.returncode, result.stderr)
    assert_clean(result)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_the_client_never_puts_a_patch_without_its_id_filter_on_the_wire() -> None:
    """A: MateoClient refuses a PATCH whose URL on the wire lacks its one `id` filter."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=[])

    ids = ConversationIds(["3c90c3cc-0d44-4b50-8888-8dd25736052a"])

    async def attempt() -> str:
        try:
            client = MateoClient(
                "http://127.0.0.1:9/api/v1#", "t", transport=httpx.MockTransport(handler)
            )
        except InputError:
            return "refused at construction"
        async with client:
            try:
                await client.patch(ids, FieldValues.of({"status": "closed"}))
            except SafetyError:
                return "refused before sending"
        return "sent"

    verdict = anyio.run(attempt)
    # Refused (at construction or before sending), or sent with exactly its one id filter.
    for request in seen:
        assert request.url.params.get_list("id") == [f"eq.{ids.ids[0]}"], str(request.url)
    assert verdict == "sent" or not seen


# --- B. Short pages: the API returns fewer rows than asked -----------------------------------


def test_a_short_snapshot_page_does_not_make_rows_not_found(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """B: max_rows=20 — a default run over 50 rows reports all 50 updated, table changed."""
    sandbox.configure(max_rows=20)
    rows = rows_where(sandbox, 50, inbox_id=INBOXES[0])
    path = write_csv(
        tmp_path / "in.csv", [{"conversation_id": r["id"], "inbox_id": INBOXES[1]} for r in rows]
    )
    result = cli(sandbox, "run", path, "--run-dir", tmp_path / "run")
    assert_clean(result)
    outcomes = outcomes_by_id(tmp_path / "run" / "report.csv")
    assert list(outcomes.values()).count("not_found") == 0, outcomes
    assert set(outcomes.values()) == {"updated"} and len(outcomes) == 50
    assert all(sandbox.row(r["id"])["inbox_id"] == INBOXES[1] for r in rows)
    assert result.returncode == 0, result.stderr


def test_a_short_read_back_page_does_not_make_rows_not_found(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """B: max_rows=20, PATCH answered 204, --no-snapshot — changed rows are never not_found."""
    sandbox.configure(max_rows=20, drop_prefer=True)
    rows = rows_where(sandbox, 50, inbox_id=INBOXES[0])
    path = write_csv(
        tmp_path / "in.csv", [{"conversation_id": r["id"], "inbox_id": INBOXES[1]} for r in rows]
    )
    result = cli(sandbox, "run", path, "--no-snapshot", "--run-dir", tmp_path / "run")
    assert_clean(result)
    outcomes = outcomes_by_id(tmp_path / "run" / "report.csv")
    assert all(sandbox.row(r["id"])["inbox_id"] == INBOXES[1] for r in rows)
    assert set(outcomes.values()) == {"updated"}, sorted(outcomes.values())
    assert result.returncode == 0, result.stderr


def test_a_query_job_reads_every_page_when_pages_are_short(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """B: a query job selecting 130 rows under max_rows=20 selects all 130."""
    sandbox.configure(max_rows=20)
    selected = [row["id"] for row in sandbox.rows() if row["status"] == "open"]
    assert len(selected) == 130
    job = tmp_path / "close-open.toml"
    job.write_text(
        '[source.query]\nstatus = "eq.open"\n[set]\nstatus = "closed"\n'
        '[limits]\nrate = "unlimited"\n[output]\nrun_dir = "run"\nquiet = true\n',
        encoding="utf-8",
    )
    result = run_cli("job", job, "--base-url", sandbox.base_url, token=sandbox.token, cwd=tmp_path)
    assert_clean(result)
    record = json.loads((tmp_path / "run" / "query.json").read_text())
    assert record["rows"] == 130, record
    assert all(sandbox.row(i)["status"] == "closed" for i in selected)
    assert result.returncode == 0, result.stderr
    # 9: the job's summary counts the query's GETs with the run's requests.
    summary = next(line for line in result.stdout.splitlines() if " requests, " in line)
    assert f"{sandbox.stats()['requests']:,} requests" in summary, summary


# --- C. Lost answers: applied, but the answer never arrived ----------------------------------

LOST_ANSWERS = {
    "applied-then-503": {"fault_applied_503": 0.3, "fault_503_retry_after": 0},
    "dropped": {"fault_drop": 0.3},
    "cutoff": {
        "cutoff_seconds": 0.05,
        "latency_ms": 60,
        "latency_distribution": "exponential",
        "cutoff_commits": True,
    },
}


@pytest.mark.usefixtures("short_backoff")
@pytest.mark.parametrize("fault", list(LOST_ANSWERS.values()), ids=list(LOST_ANSWERS))
def test_rows_whose_answer_was_lost_are_in_the_undo_file(
    sandbox: Sandbox, tmp_path: Path, fault: dict[str, Any]
) -> None:
    """C: every row updated after a lost answer is in undo.csv, and undo restores the table."""
    original = table(sandbox)
    rows = rows_where(sandbox, 40, status="open")
    lines = [
        {"conversation_id": r["id"], "inbox_id": INBOXES[n % 3 + 1], "status": "closed"}
        for n, r in enumerate(rows)
    ]
    sandbox.configure(fault_seed=7, **fault)
    result = cli(
        sandbox, "run", write_csv(tmp_path / "in.csv", lines), "--batch-size", "5",
        "--max-attempts", "10", "--timeout", "2", "--run-dir", tmp_path / "run",
    )  # fmt: skip
    assert_clean(result)
    assert sandbox.stats()["faults"], "the fault never happened: the test proves nothing"
    sandbox.configure(**{name: getattr(SandboxConfig(), name) for name in fault})
    report = read_report(tmp_path / "run" / "report.csv")
    updated = {line["conversation_id"] for line in report if line["outcome"] == "updated"}
    changed = {i for i, row in table(sandbox).items() if row != original[i]}
    assert changed <= updated, "a conversation was changed but not reported updated"
    assert_undo_holds_originals(
        undo_by_id(tmp_path / "run"), original, updated, ("inbox_id", "status")
    )
    undone = cli(sandbox, "run", tmp_path / "run" / "undo.csv", "--run-dir", tmp_path / "undo")
    assert undone.returncode == 0, undone.stdout + undone.stderr
    assert table(sandbox) == original


# --- D. A crash between the server's commit and the journal's ----------------------------------


def _journaled(run_dir: Path) -> set[str]:
    path = run_dir / "journal.sqlite"
    if not path.exists():
        return set()
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
            query = "SELECT conversation_id FROM results WHERE outcome = 'updated'"
            return {row for (row,) in connection.execute(query)}
    except sqlite3.OperationalError:
        return set()


def _patched(log: Path) -> set[str]:
    ids: set[str] = set()
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        if entry["method"] == "PATCH":
            ids.update(entry["ids_updated"])
    return ids


def test_rows_applied_before_a_sigkill_are_updated_and_undoable_after_resume(
    tmp_path: Path,
) -> None:
    """D: SIGKILL mid-run, resume — rows the run changed are `updated` and in undo.csv."""
    log = tmp_path / "requests.jsonl"
    with checked_sandbox(SandboxConfig(latency_ms=20), generate=700, request_log=log) as api:
        rows = api.rows()
        target = rows[-1]["inbox_id"]
        lines = [
            {"conversation_id": row["id"], "inbox_id": target, "status": "archived"}
            for row in rows[:600]
        ]
        path = write_csv(tmp_path / "job.csv", lines)
        original = table(api)
        run_dir = tmp_path / "run"
        env = {key: value for key, value in os.environ.items() if key != "MATEO_BASE_URL"}
        env["MATEO_API_TOKEN"] = api.token
        process = subprocess.Popen(
            [
                sys.executable, "-m", "pipeline", "run", str(path), "--base-url", api.base_url,
                "--rate", "unlimited", "--concurrency", "4", "--batch-size", "10",
                "--run-dir", str(run_dir), "--quiet",
            ],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while len(_journaled(run_dir)) < 150:
            assert process.poll() is None, "the run ended before the kill"
            assert time.monotonic() < deadline
            time.sleep(0.001)
        process.send_signal(signal.SIGKILL)
        process.communicate()
        time.sleep(0.3)  # requests in flight at the kill reach the server
        in_the_gap = _patched(log) - _journaled(run_dir)
        assert in_the_gap, "no row was applied but unjournaled at the kill: nothing to prove"

        resumed = run_cli("resume", run_dir, "--quiet", token=api.token)
        assert_clean(resumed)
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        changed = {i for i, row in table(api).items() if row != original[i]}
        outcomes = outcomes_by_id(run_dir / "report.csv")
        wrong = {i: outcomes.get(i) for i in changed if outcomes.get(i) != "updated"}
        assert not wrong, f"{len(wrong)} rows the run changed are reported {set(wrong.values())}"
        assert_undo_holds_originals(undo_by_id(run_dir), original, changed, ("inbox_id", "status"))
        undone = run_cli(
            "run", run_dir / "undo.csv", "--base-url", api.base_url, "--rate", "unlimited",
            "--run-dir", tmp_path / "undo", "--quiet", token=api.token,
        )  # fmt: skip
        assert undone.returncode == 0, undone.stdout + undone.stderr
        assert table(api) == original


# --- E. Guard misses: answers that do not say which rows changed ----------------------------


@pytest.mark.parametrize(
    "switches",
    [{"drop_prefer": True}, {"object_response": "first"}],
    ids=["204", "one-object"],
)
def test_a_row_changed_after_the_plan_is_a_conflict_whatever_the_answer_shape(
    sandbox: Sandbox, tmp_path: Path, switches: dict[str, Any]
) -> None:
    """E: 204 or one object for many: a row changed by someone else is conflict, not updated."""
    sandbox.configure(**switches)
    path, ids = moving_job(sandbox, tmp_path, 8)
    planned = cli(sandbox, "plan", path, "--run-dir", tmp_path / "plan")
    assert planned.returncode == 0, planned.stdout + planned.stderr
    victims = ids[:2]
    for victim in victims:
        other_writer(sandbox, victim, {"inbox_id": INBOXES[3]})
    applied = cli(sandbox, "apply", tmp_path / "plan" / "plan.csv", "--run-dir", tmp_path / "a")
    assert_clean(applied)
    outcomes = outcomes_by_id(tmp_path / "a" / "report.csv")
    assert {i: outcomes[i] for i in victims} == {i: "conflict" for i in victims}
    assert {outcomes[i] for i in ids[2:]} == {"updated"}
    assert all(sandbox.row(i)["inbox_id"] == INBOXES[3] for i in victims)
    assert not set(victims) & set(undo_by_id(tmp_path / "a"))
    assert applied.returncode == 1


def test_forced_single_objects_give_conflict_and_updated_never_not_found(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """E: force_single_object — a guard miss is conflict, an applied-then-503 row updated."""
    rows = rows_where(sandbox, 12, status="open")
    lines = [
        {"conversation_id": r["id"], "status": "closed", "expect_status": "open"} for r in rows
    ]
    path = write_csv(
        tmp_path / "in.csv", lines, columns=("conversation_id", "status", "expect_status")
    )
    victims = [r["id"] for r in rows[:3]]
    for victim in victims:
        other_writer(sandbox, victim, {"status": "archived"})
    sandbox.configure(
        force_single_object=True, fault_applied_503=0.4, fault_503_retry_after=0, fault_seed=5
    )
    result = cli(
        sandbox, "run", path, "--no-snapshot", "--max-attempts", "10", "--timeout", "2",
        "--run-dir", tmp_path / "run",
    )  # fmt: skip
    assert_clean(result)
    assert sandbox.stats()["faults"].get("applied_503"), "no applied-then-503: proves nothing"
    outcomes = outcomes_by_id(tmp_path / "run" / "report.csv")
    assert "not_found" not in outcomes.values(), outcomes
    assert {outcomes[i] for i in victims} == {"conflict"}
    assert {outcomes[r["id"]] for r in rows[3:]} == {"updated"}
    assert all(sandbox.row(i)["status"] == "archived" for i in victims)
    assert all(sandbox.row(r["id"])["status"] == "closed" for r in rows[3:])


def test_applying_a_stale_plan_again_updates_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    """E: a plan applied twice — the second apply reports its rows unchanged, not updated."""
    path, ids = moving_job(sandbox, tmp_path, 8)
    assert cli(sandbox, "plan", path, "--run-dir", tmp_path / "plan").returncode == 0
    first = cli(sandbox, "apply", tmp_path / "plan" / "plan.csv", "--run-dir", tmp_path / "a1")
    assert first.returncode == 0, first.stdout + first.stderr
    sandbox.reset_stats()
    second = cli(sandbox, "apply", tmp_path / "plan" / "plan.csv", "--run-dir", tmp_path / "a2")
    assert_clean(second)
    assert sandbox.stats()["ids_updated"] == 0
    outcomes = outcomes_by_id(tmp_path / "a2" / "report.csv")
    assert "updated" not in outcomes.values(), outcomes
    assert set(outcomes.values()) == {"unchanged"}
    assert not undo_by_id(tmp_path / "a2")


# --- F. A proxy that fills status=open ---------------------------------------------------------


def test_a_status_the_proxy_changed_is_reported_and_undone(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """F: default_status_open — a difference on status, exit 1, and undo restores status too."""
    rows = rows_where(sandbox, 6, status="closed", inbox_id=INBOXES[0])
    original = table(sandbox)
    path = write_csv(
        tmp_path / "in.csv", [{"conversation_id": r["id"], "inbox_id": INBOXES[1]} for r in rows]
    )
    sandbox.configure(default_status_open=True)
    result = cli(sandbox, "run", path, "--run-dir", tmp_path / "run")
    assert_clean(result)
    assert all(sandbox.row(r["id"])["status"] == "open" for r in rows)  # what the proxy did
    report = read_report(tmp_path / "run" / "report.csv")
    assert all("status" in (line["difference"] or "") for line in report), report
    assert result.returncode == 1
    # The summary's notice (on stdout) names the field the run did not ask to change.
    notes = [line for line in result.stdout.splitlines() if "did not ask to change" in line]
    assert notes and "status" in notes[0], result.stdout
    sandbox.configure(default_status_open=False)
    undone = cli(sandbox, "run", tmp_path / "run" / "undo.csv", "--run-dir", tmp_path / "undo")
    assert undone.returncode == 0, undone.stdout + undone.stderr
    assert table(sandbox) == original


# --- G. plan → apply when the API refuses multi-row reads ------------------------------------


@pytest.mark.parametrize(
    "switches",
    [{"force_single_object": True}, {"max_url_length": 300}],
    ids=["single-object", "url-414"],
)
def test_a_plan_without_before_values_never_leads_to_an_unguarded_apply(
    sandbox: Sandbox, tmp_path: Path, switches: dict[str, Any]
) -> None:
    """G: multi-row reads refused — plan reads every row or refuses; apply never overwrites."""
    path, ids = moving_job(sandbox, tmp_path, 8)
    sandbox.configure(**switches)
    planned = cli(sandbox, "plan", path, "--run-dir", tmp_path / "plan")
    assert_clean(planned)
    plan_file = tmp_path / "plan" / "plan.csv"
    change = [
        line for line in (read_report(plan_file) if plan_file.exists() else [])
        if line["decision"] == "change"
    ]  # fmt: skip
    if change and all(line["before_inbox_id"] for line in change):
        assert {line["conversation_id"] for line in change} == set(ids)
    else:
        # The other acceptable answer: exit non-zero, saying the snapshot could not be taken.
        assert planned.returncode != 0, (
            "plan wrote `change` rows without before-values and exited 0:\n"
            + planned.stdout
            + planned.stderr
        )
        assert "snapshot" in (planned.stdout + planned.stderr).lower()
        if not change:
            # No plan to apply: make one while multi-row reads work, apply it under the switch.
            sandbox.configure(**{name: getattr(SandboxConfig(), name) for name in switches})
            assert cli(sandbox, "plan", path, "--run-dir", tmp_path / "plan2").returncode == 0
            plan_file = tmp_path / "plan2" / "plan.csv"
            sandbox.configure(**switches)
    victim = ids[0]
    other_writer(sandbox, victim, {"inbox_id": INBOXES[3]})
    applied = cli(sandbox, "apply", plan_file, "--run-dir", tmp_path / "apply")
    assert_clean(applied)
    assert sandbox.row(victim)["inbox_id"] == INBOXES[3], "apply overwrote a later change"
    if applied.returncode != 2:  # apply may refuse a plan without before-values outright
        outcomes = outcomes_by_id(tmp_path / "apply" / "report.csv")
        assert outcomes[victim] == "conflict"
        assert {outcomes[i] for i in ids[1:]} == {"updated"}


# --- H. Clean stops ----------------------------------------------------------------------------


def _stale_apply_job(sandbox: Sandbox, tmp_path: Path) -> tuple[Path, list[str]]:
    """A plan of 30 rows in 3 groups, then someone else changes 2 rows of each group."""
    rows = rows_where(sandbox, 30, inbox_id=INBOXES[0])
    lines = [
        {"conversation_id": row["id"], "inbox_id": INBOXES[1 + n // 10]}
        for n, row in enumerate(rows)
    ]
    path = write_csv(tmp_path / "job.csv", lines)
    planned = cli(sandbox, "plan", path, "--run-dir", tmp_path / "plan")
    assert planned.returncode == 0, planned.stdout + planned.stderr
    stale = [row["id"] for n, row in enumerate(rows) if n % 10 < 2]
    for conversation_id in stale:
        other_writer(sandbox, conversation_id, {"inbox_id": INBOXES[4]})
    return tmp_path / "plan" / "plan.csv", stale


@pytest.mark.parametrize("where", ["conflict-read", "204-read-back"])
def test_max_requests_during_a_read_stops_cleanly_and_resumes(
    sandbox: Sandbox, tmp_path: Path, where: str
) -> None:
    """H: --max-requests reached during a read — exit 3, no traceback, a report; resumable."""
    common = ("--batch-size", "10", "--concurrency", "1", "--run-dir", tmp_path / "run")
    if where == "conflict-read":
        # PATCH, its conflict read, PATCH: the budget runs out on the second conflict read.
        plan_file, _ = _stale_apply_job(sandbox, tmp_path)
        result = cli(sandbox, "apply", plan_file, *common, "--max-requests", "3")
    else:
        # Every PATCH is answered 204 and read back: snapshot GET, PATCH, read-back, PATCH,
        # and the budget runs out on the second read-back, after its PATCH was applied.
        sandbox.configure(drop_prefer=True)
        original = table(sandbox)
        rows = rows_where(sandbox, 30, status="open")
        lines = [{"conversation_id": r["id"], "status": "closed"} for r in rows]
        path = write_csv(tmp_path / "in.csv", lines)
        result = cli(sandbox, "run", path, *common, "--max-requests", "4")
    assert_clean(result)
    assert result.returncode == 3, result.stdout + result.stderr
    assert (tmp_path / "run" / "report.csv").exists()
    finished = resume_until_done(tmp_path / "run", sandbox.token)
    assert finished.returncode in (0, 1), finished.stdout + finished.stderr
    if where == "204-read-back":
        # A row applied before the stop is the run's change: updated, and undoable.
        changed = {i for i, row in table(sandbox).items() if row != original[i]}
        assert changed == {r["id"] for r in rows}
        outcomes = outcomes_by_id(tmp_path / "run" / "report.csv")
        assert {outcomes[i] for i in changed} == {"updated"}, sorted(outcomes.values())
        assert_undo_holds_originals(undo_by_id(tmp_path / "run"), original, changed, ("status",))


class _TokenRotatingTransport(httpx.AsyncBaseTransport):
    """Real HTTP to the sandbox; after the first PATCH, the account's token is revoked."""

    def __init__(self, sandbox: Sandbox) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._sandbox = sandbox

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        if request.method == "PATCH":
            self._sandbox.configure(token="rotated-token")
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


def test_a_token_revoked_during_a_read_stops_cleanly(sandbox: Sandbox, tmp_path: Path) -> None:
    """H: a 403 on the read after a guarded PATCH — stopped (exit 3) with a report, no raise."""
    plan_file, _ = _stale_apply_job(sandbox, tmp_path)
    settings = RunSettings(
        plan_file,
        token=sandbox.token,
        base_url=sandbox.base_url,
        rate=None,
        concurrency=1,
        batch_size=10,
        run_dir=tmp_path / "run",
        transport="httpx",
    )
    summary = apply_plan(plan_file, settings, transport=_TokenRotatingTransport(sandbox))
    assert summary.exit_code == 3
    assert summary.report_path is not None and summary.report_path.exists()


class _HostileHandler(http.server.BaseHTTPRequestHandler):
    """Answers every request with `status` and `body(authorization header)`."""

    status = 200
    content_type = "application/json"
    body: Callable[[str], bytes] = staticmethod(lambda authorization: b"[]")

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        payload = type(self).body(self.headers.get("authorization", ""))
        self.send_response(self.status)
        self.send_header("content-type", self.content_type)
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_PATCH = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def hostile_server() -> Iterator[Callable[..., str]]:
    """Start a loopback server answering as told; returns its base URL."""
    servers: list[http.server.ThreadingHTTPServer] = []

    def start(status: int, body: Callable[[str], bytes], content_type: str) -> str:
        handler = type(
            "Hostile",
            (_HostileHandler,),
            {"status": status, "body": staticmethod(body), "content_type": content_type},
        )
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/api/v1"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


NESTING = 20_000


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (200, b"[" * NESTING + b"]" * NESTING),
        (500, b'{"message":' * NESTING + b"1" + b"}" * NESTING),
    ],
    ids=["200-array", "500-error-body"],
)
def test_a_deeply_nested_json_answer_is_no_traceback(
    hostile_server: Callable[..., str], tmp_path: Path, status: int, body: bytes
) -> None:
    """H: a deeply nested JSON body (RecursionError) — rows failed, no traceback."""
    base_url = hostile_server(status, lambda authorization: body, "application/json")
    path = write_csv(
        tmp_path / "in.csv",
        [{"conversation_id": "3c90c3cc-0d44-4b50-8888-8dd25736052a", "status": "closed"}],
    )
    result = run_cli(
        "run", path, "--base-url", base_url, "--rate", "unlimited", "--no-snapshot",
        "--max-attempts", "2", "--timeout", "2", "--run-dir", tmp_path / "run", "--quiet",
        token="secret-token-0123456789",
    )  # fmt: skip
    assert_clean(result)
    assert result.returncode == 1, result.stderr[-2000:]
    assert outcomes_by_id(tmp_path / "run" / "report.csv") == {
        "3c90c3cc-0d44-4b50-8888-8dd25736052a": "failed"
    }


# --- I. Smaller ones ---------------------------------------------------------------------------


def test_an_http_date_retry_after_is_read_as_utc_whatever_the_local_zone() -> None:
    """I: Retry-After as an HTTP date (-0000 and GMT) ~5 s ahead reads as ~5 s under TZ=NY."""
    code = (
        "import json, time\n"
        "from email.utils import formatdate\n"
        "from pipeline.api.client import _parse_seconds\n"
        "ahead = time.time() + 5\n"
        "print(json.dumps([_parse_seconds(formatdate(ahead)),"
        " _parse_seconds(formatdate(ahead, usegmt=True))]))\n"
    )
    env = {**os.environ, "TZ": "America/New_York"}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    minus_zero, gmt = json.loads(result.stdout)
    assert 3.5 <= gmt <= 6, gmt
    assert 3.5 <= minus_zero <= 6, f"'-0000' date read as {minus_zero} s, not ~5 s"


TOKEN = "tok-redact-5f0e9a1c7b3d4e2f8a6c0b9d1e3f5a7c"


@pytest.mark.parametrize("kind", ["json-message", "text-body"])
def test_a_long_error_message_echoing_the_token_leaks_no_part_of_it(
    hostile_server: Callable[..., str], tmp_path: Path, kind: str
) -> None:
    """I: the error message is redacted before it is truncated — no token prefix in report."""

    def echo(authorization: str) -> bytes:
        token = authorization.removeprefix("Bearer ")
        if kind == "json-message":
            message = "x" * 480 + " invalid key " + token
            return json.dumps({"code": "P0001", "message": message}).encode()
        return ("y" * 185 + " key " + token).encode()

    content_type = "application/json" if kind == "json-message" else "text/plain"
    base_url = hostile_server(400, echo, content_type)
    path = write_csv(
        tmp_path / "in.csv",
        [{"conversation_id": "3c90c3cc-0d44-4b50-8888-8dd25736052a", "status": "closed"}],
    )
    result = run_cli(
        "run", path, "--base-url", base_url, "--rate", "unlimited", "--no-snapshot",
        "--run-dir", tmp_path / "run", "--quiet", token=TOKEN,
    )  # fmt: skip
    assert_clean(result)
    (line,) = read_report(tmp_path / "run" / "report.csv")
    assert line["outcome"] == "rejected" and line["error_message"], line
    written = (
        "".join(file.read_text(errors="replace") for file in (tmp_path / "run").rglob("*.csv"))
        + result.stdout
        + result.stderr
    )
    assert TOKEN[:6] not in written, line["error_message"][-80:]


def _stopped_run(sandbox: Sandbox, tmp_path: Path, **kwargs: Any) -> Any:
    """A run of 6 rows stopped by --max-requests 2 (exit 3), one PATCH per row."""
    rows = rows_where(sandbox, 6, status="open")
    lines = [{"conversation_id": r["id"], "status": "closed"} for r in rows]
    stdin = kwargs.pop("stdin", None)
    source: Any = "-" if stdin else write_csv(tmp_path / "in.csv", lines)
    if stdin:
        buffer = tmp_path / "stdin-source.csv"
        write_csv(buffer, lines)
        kwargs["stdin"] = buffer.read_bytes()
    result = cli(
        sandbox, "run", source, "--no-snapshot", "--batch-size", "1", "--concurrency", "1",
        "--max-requests", "2", "--run-dir", tmp_path / "run", **kwargs,
    )  # fmt: skip
    assert result.returncode == 3, result.stdout + result.stderr
    return rows


def test_resume_refuses_another_token_than_the_run_started_with(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """I: resume with a different token — exit 2, a clear message, nothing sent."""
    _stopped_run(sandbox, tmp_path)
    sandbox.reset_stats()
    result = run_cli("resume", tmp_path / "run", "--quiet", token="some-other-token")
    assert_clean(result)
    assert sandbox.stats()["requests"] == 0, sandbox.stats()["requests_by_method"]
    assert result.returncode == 2, result.stdout + result.stderr
    assert "token" in result.stderr.lower()


def test_resume_works_after_the_run_directory_is_moved(sandbox: Sandbox, tmp_path: Path) -> None:
    """I: `run -` keeps stdin.csv in the run dir; after `mv RUN_DIR`, resume still works."""
    rows = _stopped_run(sandbox, tmp_path, stdin=True)
    moved = tmp_path / "elsewhere" / "moved-run"
    moved.parent.mkdir()
    (tmp_path / "run").rename(moved)
    finished = resume_until_done(moved, sandbox.token)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert all(sandbox.row(r["id"])["status"] == "closed" for r in rows)


def test_a_none_flag_does_not_override_the_job_files_rate() -> None:
    """I: resolve_job(spec, {"rate": None}) keeps the job file's rate, not unlimited."""
    spec = load_job(REPO / "jobs" / "close-stale.toml")
    assert spec.options["rate"] == 2
    job = resolve_job(spec, {"rate": None}, token="t")
    assert job.settings.rate == 2.0


class _LoopbackOnly(httpx.AsyncBaseTransport):
    """Real HTTP, but only to loopback: a request to any other host is refused here."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.refused: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host not in ("127.0.0.1", "localhost"):
            self.refused.append(str(request.url))
            raise httpx.ConnectError("the test allows loopback only", request=request)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def test_the_python_api_honours_mateo_base_url(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """I: RunSettings/run without base_url use MATEO_BASE_URL (the requests reach it)."""
    monkeypatch.setenv("MATEO_BASE_URL", sandbox.base_url)
    rows = rows_where(sandbox, 3, status="open")
    path = write_csv(
        tmp_path / "in.csv", [{"conversation_id": r["id"], "status": "closed"} for r in rows]
    )
    transport = _LoopbackOnly()
    summary = run(
        RunSettings(path, token=sandbox.token, rate=None, max_attempts=1, run_dir=tmp_path / "run"),
        transport=transport,
    )
    assert not transport.refused, transport.refused[:1]
    assert sandbox.stats()["requests"] > 0
    assert summary.exit_code == 0
    assert all(sandbox.row(r["id"])["status"] == "closed" for r in rows)


def _dry_run(sandbox: Sandbox, tmp_path: Path, rows: int, *args: str) -> str:
    path = tmp_path / "big.csv"
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["conversation_id", "inbox_id"])
        writer.writerows([str(uuid.uuid4()), INBOXES[1]] for _ in range(rows))
    result = run_cli(
        "run", path, "--dry-run", "--quiet", "--run-dir", tmp_path / "run", *args,
        token=sandbox.token,
    )  # fmt: skip
    assert_clean(result)
    assert result.returncode == 0, result.stderr
    return result.stdout


def _numbers(text: str) -> list[float]:
    return [float(found.replace(",", "")) for found in re.findall(r"\d[\d,]*(?:\.\d+)?", text)]


def test_a_dry_runs_estimate_counts_the_snapshot_reads(sandbox: Sandbox, tmp_path: Path) -> None:
    """I: 30,000 rows to one inbox — the estimate counts ~600 GETs besides ~600 PATCHes."""
    text = _dry_run(sandbox, tmp_path, 30_000)
    plan = "\n".join(line for line in text.splitlines() if "request" in line)
    counted_together = any(1_150 <= number <= 1_300 for number in _numbers(plan))
    counted_apart = (
        re.search(r"\b(reads?|GETs?)\b", plan, re.IGNORECASE) is not None
        and len([number for number in _numbers(plan) if 550 <= number <= 650]) >= 2
    )
    assert counted_together or counted_apart, text


def test_a_dry_run_says_how_many_api_days_the_job_needs(sandbox: Sandbox, tmp_path: Path) -> None:
    """I: 30,000 one-row PATCHes + 600 reads at 10,000/day — the dry run says 3-4 API days."""
    text = _dry_run(sandbox, tmp_path, 30_000, "--batch-size", "1")
    days = re.findall(r"(\d+(?:\.\d+)?)\s+(?:API\s+)?days?\b", text, re.IGNORECASE)
    assert days, f"no number of days in:\n{text}"
    assert any(3 <= float(found) <= 4 for found in days), text


def test_the_first_ctrl_c_ends_a_wait_for_the_budget_at_once(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """9: with --wait and the day's budget spent, the first SIGINT stops the run at once."""
    path, _ = moving_job(sandbox, tmp_path, 3)
    env = {key: value for key, value in os.environ.items() if key != "MATEO_BASE_URL"}
    env["MATEO_API_TOKEN"] = sandbox.token
    command = [sys.executable, "-m", "pipeline", "run", str(path), "--base-url"]
    command += [sandbox.base_url, "--rate", "unlimited", "--daily-quota", "1", "--wait"]
    command += ["--run-dir", str(tmp_path / "run"), "--quiet"]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 20
    # The snapshot's GET spends the budget of 1; the PATCH then sleeps until the day resets.
    while sandbox.stats()["requests"] < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    assert process.poll() is None, "the run should be sleeping until the budget resets"
    interrupted = time.monotonic()
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=15)
    assert time.monotonic() - interrupted < 5, "the first Ctrl-C did not end the wait"
    assert process.returncode == 3, stdout + stderr
    assert "Traceback" not in stderr
    assert (tmp_path / "run" / "report.csv").exists()
    assert sandbox.stats()["updates"] == 0
