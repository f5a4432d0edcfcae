"""The figures of issue 3's "Streaming and speed", measured against the sandbox.

    python bench/bench_pipeline.py requests      # requests per row, every final row checked
    python bench/bench_pipeline.py throughput    # pipeline vs bare loops vs curl, 20 ms latency
    python bench/bench_pipeline.py rate          # --rate 2 against a 2/s sandbox for 2 minutes
    python bench/bench_pipeline.py memory        # 1,000,000-row --dry-run: peak RSS and time
    python bench/bench_pipeline.py all

Each prints a table and writes bench/results/<name>-<UTC time>.json. The sandbox runs as a
subprocess pinned to core 1 and every client (the pipeline, the bare loops, curl) is pinned to
core 0 (`BENCH_SERVER_CPU` / `BENCH_CLIENT_CPU` change that). bench/README.md says what each
figure means.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    CLIENT_CPU,
    PYTHON,
    RESULTS_DIR,
    TOKEN,
    ChildRun,
    SandboxProcess,
    client_env,
    mateo_bulk,
    median,
    mismatches,
    own_cpu_seconds,
    print_table,
    read_targets,
    run_child,
    spread,
    write_input,
    write_result,
)

SELECT = "id,inbox_id,assignee_id,status"
STATUSES = ("open", "closed", "archived")


# --- 1. requests per row ------------------------------------------------------------------------


def _seed_directory(directory: Path, rows: int, extra_agents: int) -> tuple[Any, list[str]]:
    """A sandbox seed of `rows` generated conversations and `extra_agents` more agents.

    The generated data knows 8 agents and 5 inboxes, 135 combinations at most: "every row a
    different target" needs an agent per row.
    """
    from pipeline.sandbox.data import Dataset, generate_dataset, write_dataset

    base = generate_dataset(rows)
    rng = random.Random(7)
    added = [
        (str(uuid.UUID(int=rng.getrandbits(128), version=4)), f"Agent {n}")
        for n in range(extra_agents)
    ]
    new_agents = [agent_id for agent_id, _ in added]
    # The first rows start assigned to agents of their own (the second half of the new
    # agents), so that in (d) the rows already at their target all have different targets.
    half = extra_agents // 2
    rows_out = [
        {**row, "assignee_id": new_agents[half + n]} if n < half else row
        for n, row in enumerate(base.rows)
    ]
    dataset = Dataset(rows=tuple(rows_out), inboxes=base.inboxes, agents=base.agents + tuple(added))
    write_dataset(dataset, directory)
    return dataset, new_agents


def _request_scenarios(
    dataset: Any, new_agents: list[str], rows: int, distinct_rows: int
) -> list[tuple[str, str, float, Callable[[], list[tuple[str | None, ...]]], list[str]]]:
    ids = [row["id"] for row in dataset.rows]
    inboxes = [inbox_id for inbox_id, _ in dataset.inboxes]
    agents = [agent_id for agent_id, _ in dataset.agents]
    # The Archive inbox starts empty, so every row of (a) really moves.
    archive = dict((name, inbox_id) for inbox_id, name in dataset.inboxes)["Archive"]
    # Ten (inbox, assignee, status) combinations, all different, taken row by row in turn.
    combos = [(inboxes[n % 5], agents[n % 8], STATUSES[n % 3]) for n in range(10)]

    def one_inbox() -> list[tuple[str | None, ...]]:
        return [(conversation_id, archive, None, None) for conversation_id in ids[:rows]]

    def ten_combinations() -> list[tuple[str | None, ...]]:
        return [(conversation_id, *combos[n % 10]) for n, conversation_id in enumerate(ids[:rows])]

    def all_different() -> list[tuple[str | None, ...]]:
        return [
            (conversation_id, None, new_agents[n], None)
            for n, conversation_id in enumerate(ids[:distinct_rows])
        ]

    current_agent = {row["id"]: row["assignee_id"] for row in dataset.rows}

    def half_unchanged() -> list[tuple[str | None, ...]]:
        # Even rows already have their target (an agent of their own); odd rows each move to
        # another agent of their own: no two rows share a target, so nothing groups.
        return [
            (
                conversation_id,
                None,
                current_agent[conversation_id] if n % 2 == 0 else new_agents[n],
                None,
            )
            for n, conversation_id in enumerate(ids[:distinct_rows])
        ]

    # Issue 3's figures are for the grouped PATCH alone (--no-snapshot: the fewest requests);
    # (d) compares both modes on a job where a snapshot pays (issue 6).
    return [
        ("a", f"{rows:,} rows, all to one inbox", 0.021, one_inbox, ["--no-snapshot"]),
        (
            "a+snapshot",
            f"{rows:,} rows, all to one inbox (default: snapshot)",
            0.041,
            one_inbox,
            [],
        ),
        (
            "b",
            f"{rows:,} rows over 10 combinations, interleaved",
            0.03,
            ten_combinations,
            ["--no-snapshot"],
        ),
        (
            "c",
            f"{distinct_rows:,} rows, every target different",
            1.0,
            all_different,
            ["--no-snapshot"],
        ),
        (
            "d",
            f"{distinct_rows:,} rows, half already at target, --no-snapshot",
            1.0,
            half_unchanged,
            ["--no-snapshot"],
        ),
        (
            "d+snapshot",
            f"{distinct_rows:,} rows, half already at target, snapshot",
            0.53,
            half_unchanged,
            [],
        ),
    ]


def bench_requests(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-requests-", dir=_work_root()))
    try:
        dataset, new_agents = _seed_directory(
            work / "seed", args.rows, 2 * max(args.distinct_rows, 1)
        )
        results: list[dict[str, Any]] = []
        for key, title, target, make_rows, mode in _request_scenarios(
            dataset, new_agents, args.rows, args.distinct_rows
        ):
            # A fresh table for every scenario: one run must not find the last one's rows done.
            with SandboxProcess("--seed", str(work / "seed" / "conversations.csv")) as sandbox:
                input_path = work / f"scenario-{key}.csv"
                n = write_input(input_path, make_rows())
                sandbox.reset_stats()
                run = run_child(
                    mateo_bulk(
                        "run",
                        str(input_path),
                        "--base-url",
                        sandbox.base_url,
                        "--rate",
                        "unlimited",
                        "--concurrency",
                        str(args.concurrency),
                        "--quiet",
                        "--run-dir",
                        str(work / f"run-{key}"),
                        *mode,
                    ),
                    env=client_env(),
                    server=sandbox,
                )
                stats = sandbox.stats()
                wrong = mismatches(read_targets(input_path), sandbox.rows())
                by_method = stats["requests_by_method"]
                per_row = stats["requests"] / n
                ok = (
                    run.returncode == 0
                    and not wrong
                    and stats["ids_updated"] <= n
                    and stats["safety_violations"] == 0
                )
                results.append(
                    {
                        "scenario": key,
                        "title": title,
                        "rows": n,
                        "patch_requests": by_method.get("PATCH", 0),
                        "get_requests": by_method.get("GET", 0),
                        "requests": stats["requests"],
                        "requests_per_row": per_row,
                        "target": target,
                        "meets_target": per_row <= target and ok,
                        "rows_checked": n,
                        "rows_not_in_target_state": len(wrong),
                        "ids_updated": stats["ids_updated"],
                        "requests_by_status": stats["requests_by_status"],
                        "exit_code": run.returncode,
                        "wall_seconds": run.wall,
                        "stderr": run.stderr[-2000:],
                    }
                )
        print_table(
            f"1. Requests per row (mateo-bulk run --rate unlimited --concurrency "
            f"{args.concurrency}, default --batch-size 50; every row's final state checked)",
            ["scenario", "rows", "PATCH", "GET", "req/row", "target", "rows wrong", "exit", "ok"],
            [
                [
                    f"({r['scenario']}) {r['title']}",
                    r["rows"],
                    r["patch_requests"],
                    r["get_requests"],
                    f"{r['requests_per_row']:.4f}",
                    ("= 1.0" if r["target"] == 1.0 else f"<= {r['target']}"),
                    r["rows_not_in_target_state"],
                    r["exit_code"],
                    "yes" if r["meets_target"] else "NO",
                ]
                for r in results
            ],
        )
        return {"concurrency": args.concurrency, "scenarios": results}
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- 2. throughput ------------------------------------------------------------------------------

CLIENTS = {
    "pipeline-aiohttp": "pipeline, --transport aiohttp (default)",
    "pipeline-aiohttp-nojournal": "pipeline, aiohttp, journal writes replaced by a counter",
    "pipeline-httpx": "pipeline, --transport httpx",
    "bare-httpx": "bare httpx.AsyncClient + anyio.Semaphore",
    "bare-httpx-aiohttp": "bare httpx.AsyncClient(AiohttpTransport) + Semaphore",
    "curl": "curl --parallel --parallel-max C -K",
}


def _throughput_input(path: Path, served: list[dict[str, Any]]) -> None:
    """One row per conversation the sandbox serves, each changing inbox and status."""
    inboxes = sorted({row["inbox_id"] for row in served})
    write_input(
        path,
        [
            (row["id"], inboxes[n % len(inboxes)], None, STATUSES[n % 3])
            for n, row in enumerate(served)
        ],
    )


def _planned_requests(input_path: Path) -> list[tuple[str, dict[str, str | None]]]:
    """The (query, JSON body) of each PATCH the pipeline sends with --batch-size 1."""
    planned = []
    for conversation_id, wanted in read_targets(input_path).items():
        body = {name: value for name, value in wanted.items()}
        planned.append((f"id=eq.{conversation_id}&select={SELECT}", body))
    return planned


def _curl_config(path: Path, base_url: str, input_path: Path) -> None:
    blocks = []
    for query, body in _planned_requests(input_path):
        data = json.dumps(body, separators=(",", ":")).replace("\\", "\\\\").replace('"', '\\"')
        blocks.append(
            f'url = "{base_url}/conversation?{query}"\n'
            'request = "PATCH"\n'
            f'header = "Authorization: Bearer {TOKEN}"\n'
            'header = "Accept: application/json"\n'
            'header = "Content-Type: application/json"\n'
            'header = "Prefer: return=representation"\n'
            f'data = "{data}"\n'
            'output = "/dev/null"\n'
        )
    path.write_text("next\n".join(blocks))


def _client_command(
    name: str, base_url: str, input_path: Path, config: Path, concurrency: int
) -> list[str]:
    if name == "curl":
        return [
            "curl",
            "--no-progress-meter",
            "--parallel",
            "--parallel-max",
            str(concurrency),
            "-K",
            str(config),
        ]
    return [
        PYTHON,
        str(Path(__file__).resolve()),
        "client",
        name,
        "--base-url",
        base_url,
        "--input",
        str(input_path),
        "--concurrency",
        str(concurrency),
    ]


def _measure_client(
    name: str, sandbox: SandboxProcess, command: list[str], expected: int
) -> dict[str, Any]:
    sandbox.reset_stats()
    run = run_child(command, env=client_env(), server=sandbox)
    stats = sandbox.stats()
    outcome: dict[str, Any] = {"exit_code": run.returncode}
    if name == "curl":
        requests, elapsed, cpu = expected, run.wall, run.cpu
    else:
        if run.returncode != 0:
            raise RuntimeError(f"{name} failed ({run.returncode}): {run.stderr[-3000:]}")
        inner = json.loads(run.stdout.strip().splitlines()[-1])
        requests, elapsed, cpu = inner["requests"], inner["elapsed"], inner["cpu"]
        outcome = inner["outcome"]
    patches = stats["requests_by_method"].get("PATCH", 0)
    all_ok = stats["requests_by_status"] == {"200": expected} and patches == expected
    return {
        "client": name,
        "requests": patches,
        "all_200": all_ok,
        "elapsed": elapsed,
        "req_per_s": patches / elapsed,
        "cpu_seconds": cpu,
        "cpu_s_per_1k": cpu / patches * 1000 if patches else None,
        "process_wall": run.wall,
        "process_cpu": run.cpu,
        "server_cpu_util": run.extra.get("server_cpu_util"),
        "other_load_cores": run.other_load,
        "requests_by_status": stats["requests_by_status"],
        "client_requests_reported": requests,
        "client_outcome": outcome,
    }


def _round_trip_ms(sandbox: SandboxProcess, input_path: Path, probes: int = 40) -> float:
    """Median time of one PATCH at a time (urllib, keep-alive off): the c=1 round trip."""
    import urllib.request

    times = []
    for query, body in _planned_requests(input_path)[:probes]:
        request = urllib.request.Request(
            f"{sandbox.base_url}/conversation?{query}",
            method="PATCH",
            data=json.dumps(body).encode(),
            headers={
                "Authorization": f"Bearer {TOKEN}",
                "Content-Type": "application/json",
                "Prefer": "return=representation",
            },
        )
        started = time.perf_counter()
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
        times.append(time.perf_counter() - started)
    return median(times) * 1000


def bench_throughput(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bench-throughput-", dir=_work_root()))
    clients = args.clients or list(CLIENTS)
    try:
        input_path = work / "input.csv"
        expected = args.rows
        runs: list[dict[str, Any]] = []
        with SandboxProcess(
            "--generate", str(args.rows), "--latency-ms", f"{args.latency_ms:g}"
        ) as sandbox:
            _throughput_input(input_path, sandbox.rows())
            config = work / "curl.cfg"
            _curl_config(config, sandbox.base_url, input_path)
            rtt = _round_trip_ms(sandbox, input_path)
            print(
                f"sandbox {sandbox.base_url} (core 1), --latency-ms {args.latency_ms:g}; "
                f"round trip at c=1: {rtt:.1f} ms, so c/RTT = "
                f"{args.concurrency / rtt * 1000:,.0f} req/s; {expected:,} PATCHes per run, "
                f"clients on core {CLIENT_CPU}",
                flush=True,
            )
            for round_number in range(args.rounds):
                # Rotate the order every round, so no client always follows the same one.
                shift = round_number % len(clients)
                order = clients[shift:] + clients[:shift]
                for name in order:
                    command = _client_command(
                        name, sandbox.base_url, input_path, config, args.concurrency
                    )
                    result = _measure_client(name, sandbox, command, expected)
                    result["round"] = round_number + 1
                    runs.append(result)
                    if not result["all_200"]:
                        print(
                            f"  round {round_number + 1}: {name}: the sandbox saw "
                            f"{result['requests_by_status']}, the client "
                            f"{result['client_outcome']}",
                            flush=True,
                        )
                    print(
                        f"  round {round_number + 1}: {name:<20} {result['req_per_s']:>7,.0f}"
                        f" req/s  {result['elapsed']:6.2f} s  all 200: {result['all_200']}"
                        f"  other load {result['other_load_cores']:.2f} cores",
                        flush=True,
                    )
        summary = _throughput_summary(runs, clients, args)
        summary["round_trip_ms"] = rtt
        summary["c_over_rtt"] = args.concurrency / rtt * 1000
        return summary
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _throughput_summary(
    runs: list[dict[str, Any]], clients: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    by_client = {name: [run for run in runs if run["client"] == name] for name in clients}
    rows = []
    per_client = {}
    for name in clients:
        rates = [run["req_per_s"] for run in by_client[name]]
        cpu = [run["cpu_s_per_1k"] for run in by_client[name] if run["cpu_s_per_1k"]]
        server = [run["server_cpu_util"] for run in by_client[name]]
        per_client[name] = {
            "req_per_s_median": median(rates),
            "req_per_s": rates,
            "cpu_s_per_1k_median": median(cpu) if cpu else None,
        }
        rows.append(
            [
                CLIENTS[name],
                spread(rates),
                median(cpu) if cpu else "-",
                median(server),
                all(run["all_200"] for run in by_client[name]),
            ]
        )
    print_table(
        f"2. Throughput: {args.rows:,} PATCHes, one id each, c={args.concurrency}, "
        f"--latency-ms {args.latency_ms:g}, {args.rounds} rounds (median (min-max))",
        ["client (core 0)", "req/s", "CPU s/1k req", "server CPU", "all 200"],
        rows,
    )
    ratios = []
    pairs = [
        ("pipeline-aiohttp", "bare-httpx", 0.90, "target >= 0.90"),
        ("pipeline-httpx", "bare-httpx", 0.90, "target >= 0.90"),
        ("pipeline-aiohttp", "bare-httpx-aiohttp", 0.90, "same pool: pipeline overhead"),
        ("pipeline-aiohttp", "curl", 0.80, "stretch >= 0.8"),
        ("pipeline-aiohttp", "pipeline-aiohttp-nojournal", 0.95, "journal costs < 5%"),
        ("pipeline-httpx", "curl", 0.80, "stretch >= 0.8"),
    ]
    for numerator, denominator, target, note in pairs:
        if numerator not in by_client or denominator not in by_client:
            continue
        # Pair by round: both ran in the same round, minutes apart at most.
        values = [
            top["req_per_s"] / bottom["req_per_s"]
            for top in by_client[numerator]
            for bottom in by_client[denominator]
            if top["round"] == bottom["round"]
        ]
        ratios.append(
            {
                "numerator": numerator,
                "denominator": denominator,
                "median": median(values),
                "min": min(values),
                "max": max(values),
                "per_round": values,
                "target": target,
                "note": note,
                "meets": median(values) >= target,
            }
        )
    print_table(
        "   ratios of req/s, paired by round",
        ["ratio", "median", "min", "max", "goal", "met"],
        [
            [
                f"{r['numerator']} / {r['denominator']}",
                r["median"],
                r["min"],
                r["max"],
                r["note"],
                "yes" if r["meets"] else "NO",
            ]
            for r in ratios
        ],
    )
    return {
        "rows": args.rows,
        "concurrency": args.concurrency,
        "latency_ms": args.latency_ms,
        "rounds": args.rounds,
        "clients": per_client,
        "ratios": ratios,
        "runs": runs,
    }


# The worker: one client, in its own (pinned) process, timing only its own work. ------------------


def run_client(args: argparse.Namespace) -> None:
    input_path = Path(args.input)
    # Imports are start-up, not sending: load every client's modules before the clock starts.
    import anyio  # noqa: F401
    import httpx  # noqa: F401
    import httpx_aiohttp  # noqa: F401

    if args.name.startswith("pipeline-"):
        from pipeline.orchestrator.runner import RunSettings, run

        if args.name.endswith("-nojournal"):
            _count_instead_of_journaling()

        run_dir = Path(tempfile.mkdtemp(prefix="bench-run-"))
        settings = RunSettings(
            input=input_path,
            token=TOKEN,
            base_url=args.base_url,
            rate=None,
            concurrency=args.concurrency,
            batch_size=1,
            transport=args.name.removeprefix("pipeline-").removesuffix("-nojournal"),
            run_dir=run_dir,
            # The same PATCHes as the bare loops: no snapshot reads first.
            snapshot=False,
        )
        cpu_before, started = own_cpu_seconds(), time.perf_counter()
        summary = run(settings)
        elapsed, cpu = time.perf_counter() - started, own_cpu_seconds() - cpu_before
        shutil.rmtree(run_dir, ignore_errors=True)
        outcome = {str(key): value for key, value in summary.counts.items()}
        requests = summary.requests
    else:
        planned = _planned_requests(input_path)
        cpu_before, started = own_cpu_seconds(), time.perf_counter()
        statuses = _bare_loop(
            planned, args.base_url, args.concurrency, aiohttp_pool=args.name == "bare-httpx-aiohttp"
        )
        elapsed, cpu = time.perf_counter() - started, own_cpu_seconds() - cpu_before
        outcome = {str(key): value for key, value in statuses.items()}
        requests = sum(statuses.values())
    print(json.dumps({"requests": requests, "elapsed": elapsed, "cpu": cpu, "outcome": outcome}))


def _count_instead_of_journaling() -> None:
    """Keep results in a list instead of SQLite: the report is still written at the end, so the
    gap between the two pipeline clients is what the journal's writes cost."""
    from pipeline.core.models import Outcome
    from pipeline.stages.journal import Journal

    kept: list[Any] = []

    def record(self: Journal, results: Any) -> None:
        kept.extend(results)

    def results(self: Journal, outcomes: Any = None) -> Any:
        wanted = set(outcomes) if outcomes is not None else None
        return iter(
            sorted((r for r in kept if wanted is None or r.outcome in wanted), key=lambda r: r.row)
        )

    def counts(self: Journal) -> dict[Any, int]:
        counted = collections.Counter(result.outcome for result in kept)
        return {outcome: counted[outcome] for outcome in Outcome}

    Journal.record = record  # type: ignore[method-assign]
    Journal.results = results  # type: ignore[method-assign]
    Journal.counts = counts  # type: ignore[method-assign]


def _bare_loop(
    planned: Sequence[tuple[str, dict[str, str | None]]],
    base_url: str,
    concurrency: int,
    *,
    aiohttp_pool: bool,
) -> collections.Counter[int | str]:
    """Every PATCH at once behind a semaphore: the loop the issue compares the pipeline with.

    Runs on the same event loop as the pipeline (uvloop when installed), so the two differ
    only in what the pipeline does around each request.
    """
    import anyio
    import httpx

    async def main() -> collections.Counter[int | str]:
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        transport: httpx.AsyncBaseTransport
        if aiohttp_pool:
            from httpx_aiohttp import AiohttpTransport

            transport = AiohttpTransport(limits=limits, trust_env=False)
        else:
            transport = httpx.AsyncHTTPTransport(limits=limits, trust_env=False)
        statuses: collections.Counter[int | str] = collections.Counter()
        semaphore = anyio.Semaphore(concurrency)
        endpoint = f"{base_url}/conversation"
        async with httpx.AsyncClient(
            transport=transport,
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=30,
            trust_env=False,
        ) as client:

            async def send(query: str, body: dict[str, str | None]) -> None:
                async with semaphore:
                    try:
                        response = await client.patch(
                            f"{endpoint}?{query}",
                            json=body,
                            headers={"Prefer": "return=representation"},
                        )
                    except httpx.TransportError as error:
                        # Counted, not retried: a bare loop has no retries; "all 200" shows it.
                        statuses[type(error).__name__] += 1
                    else:
                        statuses[response.status_code] += 1

            async with anyio.create_task_group() as tasks:
                for query, body in planned:
                    tasks.start_soon(send, query, body)
        return statuses

    try:
        import uvloop  # noqa: F401

        options = {"use_uvloop": True}
    except ImportError:
        options = {}
    return anyio.run(main, backend_options=options)


# --- 3. rate accuracy ---------------------------------------------------------------------------


def _arrivals(log_path: Path) -> list[float]:
    """Arrival times (s) of the PATCHes in a sandbox request log: answer time minus duration."""
    times = []
    for line in log_path.read_text().splitlines():
        entry = json.loads(line)
        if entry["method"] != "PATCH":
            continue
        answered = datetime.fromisoformat(entry["time"]).timestamp()
        times.append(answered - entry["duration_ms"] / 1000)
    return sorted(times)


def bench_rate(args: argparse.Namespace) -> dict[str, Any]:
    duration = 20.0 if args.quick else args.duration
    rows = round(duration * args.rate) + 1
    work = Path(tempfile.mkdtemp(prefix="bench-rate-", dir=_work_root()))
    try:
        input_path = work / "input.csv"
        log_path = work / "requests.jsonl"
        with SandboxProcess(
            "--generate", str(rows), "--rate", f"{args.rate:g}", "--request-log", str(log_path)
        ) as sandbox:
            # Every row changes status (to the one after its current one), so each PATCH counts.
            write_input(
                input_path,
                [
                    (row["id"], None, None, STATUSES[(STATUSES.index(row["status"]) + 1) % 3])
                    for row in sandbox.rows()
                ],
            )
            print(
                f"sandbox --rate {args.rate:g} (default burst); {rows} rows, one PATCH each, "
                f"about {duration:.0f} s...",
                flush=True,
            )
            run = run_child(
                mateo_bulk(
                    "run",
                    str(input_path),
                    "--base-url",
                    sandbox.base_url,
                    "--rate",
                    f"{args.rate:g}",
                    "--batch-size",
                    "1",
                    "--no-snapshot",
                    "--concurrency",
                    str(args.concurrency),
                    "--quiet",
                    "--run-dir",
                    str(work / "run"),
                ),
                env=client_env(),
                server=sandbox,
            )
            stats = sandbox.stats()
            wrong = mismatches(read_targets(input_path), sandbox.rows())
        arrivals = _arrivals(log_path)
        span = arrivals[-1] - arrivals[0]
        # n requests spaced evenly at rate r span (n - 1) / r seconds.
        achieved = (len(arrivals) - 1) / span
        gaps = [later - earlier for earlier, later in zip(arrivals, arrivals[1:], strict=False)]
        result = {
            "rows": rows,
            "rate_limit": args.rate,
            "concurrency": args.concurrency,
            "quick": args.quick,
            "patch_requests": len(arrivals),
            "requests": stats["requests"],
            "span_seconds": span,
            "achieved_rate": achieved,
            "achieved_over_limit": achieved / args.rate,
            "end_to_end_rate": len(arrivals) / run.wall,
            "cli_wall_seconds": run.wall,
            "rate_limited_429": stats["rate_limited"],
            "max_requests_in_1s": stats["max_requests_in_1s"],
            "min_gap_ms": min(gaps) * 1000,
            "median_gap_ms": median(gaps) * 1000,
            "max_gap_ms": max(gaps) * 1000,
            # Gaps of 1.5 intervals or more: slots the run left unused, and where.
            "long_gaps": [
                {"after_request": n + 1, "at_second": arrivals[n] - arrivals[0], "ms": gap * 1000}
                for n, gap in enumerate(gaps)
                if gap >= 1.5 / args.rate
            ],
            "rows_not_in_target_state": len(wrong),
            "exit_code": run.returncode,
            "requests_by_status": stats["requests_by_status"],
        }
        meets = result["achieved_over_limit"] >= 0.97 and result["rate_limited_429"] == 0
        result["meets_target"] = meets
        print_table(
            f"3. Rate accuracy: mateo-bulk run --rate {args.rate:g} --batch-size 1 "
            f"--concurrency {args.concurrency} against sandbox --rate {args.rate:g}"
            + (" (QUICK 20 s run: not the figure bench/README.md gives)" if args.quick else ""),
            ["figure", "value", "target"],
            [
                ["PATCHes sent (rows)", len(arrivals), ""],
                ["first to last request, s", span, ""],
                ["achieved rate, req/s ((n-1)/span, at the server)", f"{achieved:.4f}", ""],
                ["achieved / limit", f"{achieved / args.rate:.4f}", ">= 0.97"],
                ["429 answers", stats["rate_limited"], "0"],
                [
                    "max requests in any 1 s window",
                    stats["max_requests_in_1s"],
                    f"<= {args.rate:g}",
                ],
                [
                    "gap between requests, ms: min / median / max",
                    f"{result['min_gap_ms']:.0f} / {result['median_gap_ms']:.0f} / "
                    f"{result['max_gap_ms']:.0f}",
                    "",
                ],
                ["gaps of 1.5 intervals or more (slots lost)", len(result["long_gaps"]), ""],
                [
                    "end to end, req/s (n / CLI wall incl. start-up)",
                    f"{result['end_to_end_rate']:.4f}",
                    "",
                ],
                [
                    "rows not in target state / exit code",
                    f"{len(wrong)} / {run.returncode}",
                    "0 / 0",
                ],
                ["met", "yes" if meets else "NO", ""],
            ],
        )
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --- 4. memory and time -------------------------------------------------------------------------


def _million_rows(rows: int) -> tuple[Path, Path]:
    """The 1M-row CSV and its Parquet copy in bench/results/, written once and reused."""
    csv_path = RESULTS_DIR / f"rows-{rows}.csv"
    parquet_path = csv_path.with_suffix(".parquet")
    if not csv_path.exists():
        print(f"writing {csv_path.relative_to(RESULTS_DIR.parent.parent)} ...", flush=True)
        rng = random.Random(1)
        inboxes = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(20)]
        agents = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(200)]
        partial = csv_path.with_suffix(".partial")
        write_input(
            partial,
            (
                (
                    str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                    rng.choice(inboxes),
                    rng.choice(agents),
                    rng.choice(STATUSES),
                )
                for _ in range(rows)
            ),
        )
        partial.rename(csv_path)
        parquet_path.unlink(missing_ok=True)
    if not parquet_path.exists():
        import pyarrow as pa
        import pyarrow.csv as pa_csv
        import pyarrow.parquet as pq

        table = pa_csv.read_csv(
            csv_path,
            convert_options=pa_csv.ConvertOptions(
                column_types={
                    name: pa.string()
                    for name in ("conversation_id", "inbox_id", "assignee_id", "status")
                }
            ),
        )
        pq.write_table(table, parquet_path, row_group_size=100_000)
    return csv_path, parquet_path


def _time_v(run: ChildRun) -> dict[str, float]:
    """Peak RSS and wall time from `/usr/bin/time -v` (written at the end of stderr)."""
    found: dict[str, float] = {}
    for line in run.stderr.splitlines():
        line = line.strip()
        if line.startswith("Maximum resident set size (kbytes):"):
            found["max_rss_mib"] = int(line.rsplit(":", 1)[1]) / 1024
        elif line.startswith("Elapsed (wall clock) time"):
            clock = line.split("):", 1)[1].strip().split(":")
            found["wall"] = sum(float(part) * 60**n for n, part in enumerate(reversed(clock)))
    return found


def bench_memory(args: argparse.Namespace) -> dict[str, Any]:
    csv_path, parquet_path = _million_rows(args.rows)
    use_time = Path("/usr/bin/time").exists()
    results: list[dict[str, Any]] = []
    work = Path(tempfile.mkdtemp(prefix="bench-memory-", dir=_work_root()))
    try:
        for kind, path in (("csv", csv_path), ("parquet", parquet_path)):
            for attempt in range(args.runs):
                command = mateo_bulk(
                    "run",
                    str(path),
                    "--dry-run",
                    "--quiet",
                    "--run-dir",
                    str(work / f"{kind}-{attempt}"),
                )
                if use_time:
                    # time runs taskset, which execs the interpreter: time measures it.
                    command = ["/usr/bin/time", "-v", "taskset", "-c", str(CLIENT_CPU), *command]
                run = run_child(command, cpu=None if use_time else CLIENT_CPU)
                measured = _time_v(run) if use_time else {}
                rss = measured.get("max_rss_mib", run.max_rss_mib)
                results.append(
                    {
                        "input": kind,
                        "file": str(path),
                        "run": attempt + 1,
                        "exit_code": run.returncode,
                        "peak_rss_mib": rss,
                        "wall_seconds": measured.get("wall", run.wall),
                        "cpu_seconds": run.cpu,
                        "other_load_cores": run.other_load,
                        "summary": run.stdout.strip()[-1500:],
                        "stderr": run.stderr.split("\tCommand being timed")[0].strip()[-1500:],
                    }
                )
                shutil.rmtree(work / f"{kind}-{attempt}", ignore_errors=True)
                print(
                    f"  {kind} run {attempt + 1}: {rss:,.0f} MiB peak, "
                    f"{results[-1]['wall_seconds']:.1f} s, exit {run.returncode}",
                    flush=True,
                )
                if run.returncode != 0:
                    print(f"    stderr: {results[-1]['stderr'][-500:]}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = []
    for kind in ("csv", "parquet"):
        mine = [r for r in results if r["input"] == kind]
        peaks = [r["peak_rss_mib"] for r in mine]
        table.append(
            [
                f"{kind} ({Path(mine[0]['file']).stat().st_size / 1e6:,.0f} MB)",
                f"{median(peaks):,.0f} ({min(peaks):,.0f}-{max(peaks):,.0f})",
                median([r["wall_seconds"] for r in mine]),
                median([r["cpu_seconds"] for r in mine]),
                "yes" if max(peaks) < 400 and all(r["exit_code"] == 0 for r in mine) else "NO",
            ]
        )
    print_table(
        f"4. Memory and time: mateo-bulk run FILE --dry-run --quiet, {args.rows:,} rows, "
        f"{args.runs} runs ({'/usr/bin/time -v' if use_time else 'wait4 rusage'}; median)",
        ["input", "peak RSS MiB (min-max)", "wall s", "CPU s", "< 400 MiB"],
        table,
    )
    return {
        "rows": args.rows,
        "measured_with": "/usr/bin/time -v" if use_time else "wait4",
        "runs": results,
    }


# --- command line -------------------------------------------------------------------------------


def _work_root() -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    return RESULTS_DIR


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)

    requests = commands.add_parser("requests", help="1. requests per row, final state checked")
    requests.add_argument("--rows", type=int, default=10_000)
    requests.add_argument(
        "--distinct-rows",
        type=int,
        default=10_000,
        help="rows of scenario (c), each with its own assignee",
    )
    requests.add_argument("--concurrency", type=int, default=32)

    throughput = commands.add_parser("throughput", help="2. pipeline vs bare loops vs curl")
    throughput.add_argument("--rows", type=int, default=6_000)
    throughput.add_argument("--concurrency", type=int, default=32)
    throughput.add_argument("--latency-ms", type=float, default=20.0)
    throughput.add_argument(
        "--rounds", type=int, default=3, help="rounds of every client, order rotated each round"
    )
    throughput.add_argument(
        "--clients", nargs="+", choices=list(CLIENTS), help="only these clients (default: all)"
    )

    rate = commands.add_parser("rate", help="3. achieved rate against a rate-limited sandbox")
    rate.add_argument("--rate", type=float, default=2.0)
    rate.add_argument("--duration", type=float, default=120.0, help="seconds (default 120)")
    rate.add_argument("--concurrency", type=int, default=4)
    rate.add_argument("--quick", action="store_true", help="20 s, for trying things out")

    memory = commands.add_parser("memory", help="4. peak RSS and time of a 1M-row --dry-run")
    memory.add_argument("--rows", type=int, default=1_000_000)
    memory.add_argument("--runs", type=int, default=3)

    commands.add_parser("all", help="the four figures, with their defaults")

    client = commands.add_parser("client", help=argparse.SUPPRESS)
    client.add_argument("name", choices=[name for name in CLIENTS if name != "curl"])
    client.add_argument("--base-url", required=True)
    client.add_argument("--input", required=True)
    client.add_argument("--concurrency", type=int, default=32)
    return parser


BENCHMARKS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "requests": bench_requests,
    "throughput": bench_throughput,
    "rate": bench_rate,
    "memory": bench_memory,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "client":
        run_client(args)
        return 0
    names = list(BENCHMARKS) if args.command == "all" else [args.command]
    for name in names:
        chosen = parser.parse_args([name]) if args.command == "all" else args
        result = BENCHMARKS[name](chosen)
        write_result(
            name if not getattr(chosen, "quick", False) else f"{name}-quick",
            {
                "command": " ".join([Path(PYTHON).name, *sys.argv]),
                "settings": {k: v for k, v in vars(chosen).items() if k != "command"},
                **result,
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
