"""Issue 5's benchmark: the daily budget and the rate, shared with a second client.

    python bench/bench_quota.py            # about 2 minutes (budget 200 requests)
    python bench/bench_quota.py --quick    # about 20 s (budget 40), for trying changes out

Two scenarios run side by side, each against its own sandbox at Mateo's limits
(`--rate 2`, default burst, `--daily-quota D`, `--request-log`), pinned to core 1:

  (a) shared ledger: `mateo-bulk run --rate 2` and a second `mateo-bulk run --rate 0.5` of
      another file, both with the same MATEO_BULK_STATE_DIR, so both draw from one ledger;
  (b) foreign client: `mateo-bulk run --rate 2` and a plain httpx loop sending 0.5 req/s to
      the same sandbox, which knows nothing of the ledger (it eats the server's rate and quota).

Every client runs pinned to core 0. Each input has more rows than the budget allows, so every
`mateo-bulk` run should stop with exit 3 ("budget spent"). Figures come from the sandbox's
request log and stats; each client patches its own ids, which is how the log tells them apart.
bench/README.md says what each figure means.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    CLIENT_CPU,
    PYTHON,
    REPO,
    RESULTS_DIR,
    TOKEN,
    SandboxProcess,
    client_env,
    mateo_bulk,
    pinned,
    print_table,
    write_input,
    write_result,
)

STATUSES = ("open", "closed", "archived")
RATE = 2.0
#: The second client's rate in both scenarios: a quarter of the account's 2 req/s.
SECOND_RATE = 0.5
#: The id a PATCH targets (`?id=eq.<uuid>`, one row per request).
_ID = re.compile(r"id=eq\.([0-9a-f-]{36})")
_EXIT_BUDGET_SPENT = 3


# --- the clients --------------------------------------------------------------------------------


@dataclass
class Client:
    """One client process of a scenario, and the ids it patches (how the log tells it apart)."""

    name: str
    command: list[str]
    ids: list[str]
    env: dict[str, str] | None = None
    is_pipeline: bool = True
    process: subprocess.Popen[bytes] | None = None
    output: Path | None = None
    started: float = 0.0
    wall: float | None = None

    def start(self, work: Path) -> None:
        self.output = work / f"{self.name}.log"
        with self.output.open("wb") as log:
            self.process = subprocess.Popen(
                pinned(self.command, CLIENT_CPU),
                cwd=REPO,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.started = time.monotonic()

    def poll(self) -> bool:
        """True once the process has ended."""
        assert self.process is not None
        if self.process.poll() is None:
            return False
        if self.wall is None:
            self.wall = time.monotonic() - self.started
        return True

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.poll()


def _pipeline(
    name: str,
    input_path: Path,
    sandbox: SandboxProcess,
    rate: float,
    budget: int,
    work: Path,
    env: dict[str, str],
    ids: list[str],
) -> Client:
    command = mateo_bulk(
        "run",
        str(input_path),
        "--base-url",
        sandbox.base_url,
        "--rate",
        f"{rate:g}",
        "--daily-quota",
        str(budget),
        "--no-snapshot",
        "--batch-size",
        "1",
        "--concurrency",
        "4",
        "--quiet",
        "--run-dir",
        str(work / f"run-{name}"),
    )
    return Client(name, command, ids, env=env)


def _foreign(name: str, sandbox: SandboxProcess, ids_path: Path, ids: list[str]) -> Client:
    command = [
        PYTHON,
        str(Path(__file__).resolve()),
        "foreign",
        "--base-url",
        sandbox.base_url,
        "--ids",
        str(ids_path),
        "--rate",
        f"{SECOND_RATE:g}",
    ]
    return Client(name, command, ids, is_pipeline=False)


def run_foreign(args: argparse.Namespace) -> None:
    """The foreign client: one PATCH every 1/rate s, on a fixed schedule, answers ignored.

    It knows nothing of the ledger and does not slow down on a 429: a script another team runs
    with the same token. It stops when its ids run out or when it is terminated.
    """
    import httpx

    ids = Path(args.ids).read_text().split()
    interval = 1 / args.rate
    with httpx.Client(
        base_url=args.base_url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
    ) as client:
        next_at = time.monotonic()
        for number, conversation_id in enumerate(ids):
            time.sleep(max(0.0, next_at - time.monotonic()))
            client.patch(
                f"/conversation?id=eq.{conversation_id}",
                json={"status": STATUSES[number % 3]},
                headers={"Prefer": "return=minimal"},
            )
            next_at += interval


# --- one scenario -------------------------------------------------------------------------------


@dataclass
class Scenario:
    label: str
    title: str
    sandbox: SandboxProcess
    log_path: Path
    clients: list[Client]
    #: The state directory of the ledger the pipeline runs use.
    ledger_dir: Path


def _status_changes(rows: list[dict[str, Any]]) -> list[tuple[str, None, None, str]]:
    """Input rows that move each conversation's status on by one, so every PATCH changes it."""
    return [
        (row["id"], None, None, STATUSES[(STATUSES.index(row["status"]) + 1) % 3]) for row in rows
    ]


def _setup(label: str, budget: int, work: Path, stack: ExitStack, *, foreign: bool) -> Scenario:
    """Scenario (a) (`foreign=False`) or (b): its sandbox started, its inputs, its clients."""
    folder = work / label
    folder.mkdir()
    log_path = folder / "requests.jsonl"
    main_rows, second_rows = budget + 50, budget
    sandbox = stack.enter_context(
        SandboxProcess(
            "--generate",
            str(main_rows + second_rows),
            "--rate",
            f"{RATE:g}",
            "--daily-quota",
            str(budget),
            "--request-log",
            str(log_path),
        )
    )
    rows = sandbox.rows()
    main, second = rows[:main_rows], rows[main_rows:]
    main_input = folder / "main.csv"
    write_input(main_input, _status_changes(main))
    env = client_env()
    clients = [
        _pipeline(
            f"{label}-main", main_input, sandbox, RATE, budget, folder, env, [r["id"] for r in main]
        )
    ]
    second_ids = [r["id"] for r in second]
    if foreign:
        ids_path = folder / "foreign-ids.txt"
        ids_path.write_text("\n".join(second_ids) + "\n")
        clients.append(_foreign(f"{label}-foreign-httpx", sandbox, ids_path, second_ids))
        title = (
            f"(b) foreign client: mateo-bulk --rate {RATE:g} + a plain httpx loop at "
            f"{SECOND_RATE:g} req/s that does not know the ledger"
        )
    else:
        second_input = folder / "second.csv"
        write_input(second_input, _status_changes(second))
        # The same environment, so the same MATEO_BULK_STATE_DIR: one ledger for both runs.
        clients.append(
            _pipeline(
                f"{label}-second",
                second_input,
                sandbox,
                SECOND_RATE,
                budget,
                folder,
                env,
                second_ids,
            )
        )
        title = (
            f"(a) shared ledger: mateo-bulk --rate {RATE:g} + a second mateo-bulk --rate "
            f"{SECOND_RATE:g}, one MATEO_BULK_STATE_DIR"
        )
    return Scenario(label, title, sandbox, log_path, clients, Path(env["MATEO_BULK_STATE_DIR"]))


def _ledger_used(state_dir: Path) -> int:
    """Requests the pipeline runs recorded in their shared ledger (every account, every day)."""
    path = state_dir / "ledger.sqlite"
    if not path.exists():
        return 0
    with sqlite3.connect(path) as connection:
        return int(connection.execute("SELECT COALESCE(SUM(requests), 0) FROM used").fetchone()[0])


def _requests(log_path: Path) -> list[dict[str, Any]]:
    """The sandbox's request log, each entry with its arrival time, in arrival order."""
    entries = []
    for line in log_path.read_text().splitlines():
        entry = json.loads(line)
        answered = datetime.fromisoformat(entry["time"]).timestamp()
        entry["arrived"] = answered - entry["duration_ms"] / 1000
        match = _ID.search(entry["path"])
        entry["id"] = match.group(1) if match else None
        entries.append(entry)
    return sorted(entries, key=lambda entry: entry["arrived"])


def _max_in_1s(arrivals: list[float]) -> int:
    """The most arrivals in any window (t - 1 s, t], counted as the sandbox counts them."""
    most, first = 0, 0
    for last, now in enumerate(arrivals):
        while arrivals[first] <= now - 1.0:
            first += 1
        most = max(most, last - first + 1)
    return most


def _analyse(scenario: Scenario, budget: int, stats: dict[str, Any]) -> dict[str, Any]:
    requests = _requests(scenario.log_path)
    start = requests[0]["arrived"] if requests else 0.0
    owner = {conversation_id: c.name for c in scenario.clients for conversation_id in c.ids}
    # The gateway counts every request against the day (refused ones included) before the rate:
    # from the (budget + 1)-th arrival on, a 429 is the daily quota, before it the rate.
    for number, entry in enumerate(requests):
        entry["client"] = owner.get(entry["id"], "other")
        entry["refusal"] = (
            None if entry["status"] != 429 else ("day" if number >= budget else "rate")
        )
    per_client = {}
    for client in [*scenario.clients, None]:
        name = client.name if client else "other"
        mine = [entry for entry in requests if entry["client"] == name]
        if client is None and not mine:
            continue
        refused = [entry for entry in mine if entry["status"] == 429]
        per_client[name] = {
            "requests": len(mine),
            "accepted": len(mine) - len(refused),
            "rate_429": sum(1 for entry in refused if entry["refusal"] == "rate"),
            "day_429": sum(1 for entry in refused if entry["refusal"] == "day"),
            "429_after_first": max(0, len(refused) - 1),
            "rate_429_after_first": max(
                0,
                sum(1 for entry in refused if entry["refusal"] == "rate")
                - (1 if refused and refused[0]["refusal"] == "rate" else 0),
            ),
            "429_at_seconds": [
                {"at": round(entry["arrived"] - start, 2), "limit": entry["refusal"]}
                for entry in refused
            ],
            "first_to_last_request_s": (mine[-1]["arrived"] - mine[0]["arrived"]) if mine else 0,
            "max_in_1s": _max_in_1s([entry["arrived"] for entry in mine]),
        }
        if client is not None:
            per_client[name]["is_pipeline"] = client.is_pipeline
            per_client[name]["exit_code"] = client.process.returncode if client.process else None
            per_client[name]["wall_seconds"] = client.wall
            per_client[name]["output_tail"] = (
                client.output.read_text(errors="replace")[-1500:] if client.output else ""
            )
    accepted = sum(1 for entry in requests if entry["status"] != 429)
    pipelines = [c for c in scenario.clients if c.is_pipeline]
    return {
        "title": scenario.title,
        "requests": len(requests),
        "accepted": accepted,
        "refused_for_the_day": sum(1 for entry in requests if entry["refusal"] == "day"),
        "span_seconds": (requests[-1]["arrived"] - start) if requests else 0,
        "max_in_1s_accepted": _max_in_1s(
            [entry["arrived"] for entry in requests if entry["status"] != 429]
        ),
        # Each run's own pacer holds it to --rate; two runs together may send more.
        "max_in_1s_one_run": max(per_client[c.name]["max_in_1s"] for c in pipelines),
        "ledger_used": _ledger_used(scenario.ledger_dir),
        "pipeline_requests": sum(per_client[c.name]["requests"] for c in pipelines),
        "budget_exceeded": accepted > budget,
        "pipelines_exit_3": all(
            per_client[c.name]["exit_code"] == _EXIT_BUDGET_SPENT for c in pipelines
        ),
        "clients": per_client,
        "stats": stats,
    }


def _times(refusals: list[dict[str, Any]]) -> str:
    if not refusals:
        return "-"
    shown = [f"{r['at']:.1f}" + (" (day)" if r["limit"] == "day" else "") for r in refusals[:6]]
    return ", ".join(shown) + (f" +{len(refusals) - 6} more" if len(refusals) > 6 else "")


def _print(label: str, result: dict[str, Any], budget: int) -> None:
    stats = result["stats"]
    print_table(
        f"{result['title']} (sandbox --rate {RATE:g} --daily-quota {budget})",
        [
            "client",
            "requests",
            "accepted",
            "429 rate",
            "429 day",
            "429s after its first",
            "429 at (s from the first request)",
            "exit",
        ],
        [
            [
                name,
                c["requests"],
                c["accepted"],
                c["rate_429"],
                c["day_429"],
                c["429_after_first"],
                _times(c["429_at_seconds"]),
                c.get("exit_code", "") if c.get("is_pipeline", True) else "stopped",
            ]
            for name, c in result["clients"].items()
        ],
    )
    print_table(
        "",
        ["figure", "value", "target"],
        [
            ["requests at the sandbox (all clients)", stats["requests"], ""],
            ["  answered 429 (stats)", stats["rate_limited"], ""],
            ["  accepted (not 429)", result["accepted"], f"<= {budget}"],
            [
                "  refused for the day (arrived after the first D)",
                result["refused_for_the_day"],
                "0 in (a)" if result["title"].startswith("(a)") else "",
            ],
            ["first to last request, s", result["span_seconds"], ""],
            [
                "max requests in any 1 s window: all clients (sandbox)",
                stats["max_requests_in_1s"],
                "",
            ],
            [
                "  accepted ones only (log)",
                result["max_in_1s_accepted"],
                "token bucket: 2 + refill",
            ],
            [
                "  the busiest mateo-bulk run's own (log)",
                result["max_in_1s_one_run"],
                f"<= {RATE:g}",
            ],
            ["sandbox quota_used_today (refused ones included)", stats["quota_used_today"], ""],
            [
                "ledger: requests recorded by the mateo-bulk runs",
                result["ledger_used"],
                f"= {result['pipeline_requests']} sent, <= {budget}",
            ],
            ["budget exceeded", "YES" if result["budget_exceeded"] else "no", "no"],
            [
                "every mateo-bulk run stopped with exit 3",
                "yes" if result["pipelines_exit_3"] else "NO",
                "yes",
            ],
        ],
    )


# --- the benchmark ------------------------------------------------------------------------------


def bench_quota(args: argparse.Namespace) -> dict[str, Any]:
    budget = args.daily_quota or (40 if args.quick else 200)
    # The budget, not a clock, ends the runs: D requests at 2/s, plus start-up, plus slack.
    timeout = 2 * budget / RATE + 60
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-quota-", dir=RESULTS_DIR))
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, work, True)
        scenarios = [
            _setup("a", budget, work, stack, foreign=False),
            _setup("b", budget, work, stack, foreign=True),
        ]
        clients = [client for scenario in scenarios for client in scenario.clients]
        # Runs before the sandboxes stop: no client outlives the benchmark, whatever happens.
        for client in clients:
            stack.callback(client.stop)
        print(
            f"two scenarios side by side, each against its own sandbox --rate {RATE:g} "
            f"--daily-quota {budget}; the runs stop when the budget is spent "
            f"(about {budget / RATE:.0f} s)...",
            flush=True,
        )
        for client in clients:
            client.start(work)
        deadline = time.monotonic() + timeout
        pipelines = [client for client in clients if client.is_pipeline]
        while not all(client.poll() for client in pipelines) and time.monotonic() < deadline:
            for scenario in scenarios:
                # The foreign loop lasts as long as the pipeline run it competes with.
                if scenario.clients[0].poll():
                    for client in scenario.clients[1:]:
                        if not client.is_pipeline:
                            client.stop()
            time.sleep(0.1)
        for client in clients:
            client.stop()  # a no-op unless it outlived the deadline
        results = {}
        for scenario in scenarios:
            stats = scenario.sandbox.stats()
            scenario.sandbox.stop()  # closes the request log
            results[scenario.label] = _analyse(scenario, budget, stats)
    if args.quick:
        print("\nQUICK run: not the figure bench/README.md gives")
    for label, result in results.items():
        _print(label, result, budget)
    runs = [c for r in results.values() for c in r["clients"].values() if c.get("is_pipeline")]
    met = (
        all(run["429_after_first"] == 0 for run in runs)
        and not any(r["budget_exceeded"] for r in results.values())
        and all(r["pipelines_exit_3"] for r in results.values())
        and results["a"]["refused_for_the_day"] == 0
    )
    print(f"\nmet (no 429 after a run's first, budget kept, exit 3): {'yes' if met else 'NO'}")
    return {
        "daily_quota": budget,
        "rate": RATE,
        "second_rate": SECOND_RATE,
        "met": met,
        "scenarios": results,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="budget 40: about 20 s")
    parser.add_argument("--daily-quota", type=int, help="D, the day's budget (default 200)")
    commands = parser.add_subparsers(dest="command")
    foreign = commands.add_parser("foreign", help=argparse.SUPPRESS)
    foreign.add_argument("--base-url", required=True)
    foreign.add_argument("--ids", required=True)
    foreign.add_argument("--rate", type=float, default=SECOND_RATE)
    args = parser.parse_args(argv)
    if args.command == "foreign":
        run_foreign(args)
        return 0
    result = bench_quota(args)
    write_result(
        "quota-quick" if args.quick else "quota",
        {
            "command": " ".join([Path(PYTHON).name, *sys.argv]),
            "settings": {k: v for k, v in vars(args).items() if k != "command"},
            **result,
        },
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
