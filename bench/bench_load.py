"""Load: 100,000 rows through the real CLI against the sandbox with 5% mixed faults and a limit.

Both run as subprocesses, as a user would run them:

    python -m pipeline sandbox --generate 100000 --rate 200 --fault-500 0.01 --fault-502 0.01 \\
        --fault-503 0.01 --fault-drop 0.01 --fault-applied-503 0.01 ...
    python -m pipeline run input.csv --base-url ... --rate 150 --concurrency 8

then prints rows, faults seen, requests, retries, 429s, the pipeline's peak RSS (and its RSS
sampled during the run, to show it stays flat), and the final check: every row of the sandbox's
table holds its target, and the report has 100,000 lines with every row once.

    .venv/bin/python bench/bench_load.py [--rows 100000] [--rate 150] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
TOKEN = "bench-load-token"
STATUSES = ("open", "closed", "archived")
#: 5% of requests fail, split evenly among the five transient kinds.
FAULTS = ("500", "502", "503", "drop", "applied-503")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start_sandbox(rows: int, rate: float, fault_share: float, seed: int) -> tuple[Any, str]:
    port = _free_port()
    each = f"{fault_share / len(FAULTS):g}"
    command = [
        sys.executable, "-m", "pipeline", "sandbox", "--generate", str(rows),
        "--port", str(port), "--token", TOKEN, "--rate", f"{rate:g}",
        "--fault-seed", str(seed), "--fault-503-retry-after", "0",
        *(argument for kind in FAULTS for argument in (f"--fault-{kind}", each)),
    ]  # fmt: skip
    print("sandbox: " + " ".join(command[1:]))
    process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True)
    root = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(root + "/_sandbox/stats", timeout=1)
            return process, root
        except httpx.TransportError:
            if process.poll() is not None:
                break
            time.sleep(0.1)
    process.kill()
    raise SystemExit(f"the sandbox did not start: {process.communicate()[1]}")


def _targets(table: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    """A change for every row: the next status, and an inbox other than its own."""
    inboxes = sorted({row["inbox_id"] for row in table if row["inbox_id"]})
    targets = {}
    for n, row in enumerate(table):
        status = STATUSES[(STATUSES.index(row["status"]) + 1) % len(STATUSES)]
        inbox = inboxes[n % len(inboxes)]
        if inbox == row["inbox_id"]:
            inbox = inboxes[(n + 1) % len(inboxes)]
        targets[row["id"]] = {"status": status, "inbox_id": inbox}
    return targets


def _write_input(path: Path, targets: dict[str, dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["conversation_id", "inbox_id", "status"])
        for row_id, target in targets.items():
            writer.writerow([row_id, target["inbox_id"], target["status"]])


class _RssSampler:
    """Samples a process's resident memory from /proc every half second."""

    def __init__(self, pid: int) -> None:
        self.samples: list[int] = []
        #: The kernel's high-water mark of the process's RSS (VmHWM), as last read: the exact
        #: peak up to the last sample, spikes between samples included.
        self.peak_kib = 0
        self._pid = pid
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        status = Path(f"/proc/{self._pid}/status")
        while not self._stop.wait(0.5):
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.samples.append(int(line.split()[1]))
                    elif line.startswith("VmHWM:"):
                        self.peak_kib = max(self.peak_kib, int(line.split()[1]))
            except OSError:
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--sandbox-rate", type=float, default=200.0)
    parser.add_argument("--faults", type=float, default=0.05, help="share of faulty answers")
    parser.add_argument("--rate", default="150", help="the pipeline's --rate")
    parser.add_argument("--concurrency", default="8")
    parser.add_argument("--seed", type=int, default=1)
    options = parser.parse_args()

    sandbox, root = _start_sandbox(options.rows, options.sandbox_rate, options.faults, options.seed)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-load-") as scratch:
            work = Path(scratch)
            table = httpx.get(root + "/_sandbox/rows", timeout=60).json()
            targets = _targets(table)
            _write_input(work / "input.csv", targets)
            command = [
                sys.executable, "-m", "pipeline", "run", str(work / "input.csv"),
                "--base-url", root + "/api/v1", "--rate", options.rate,
                "--concurrency", options.concurrency, "--run-dir", str(work / "run"), "--quiet",
            ]  # fmt: skip
            print("pipeline: " + " ".join(command[1:]))
            environment = {
                **os.environ,
                "MATEO_API_TOKEN": TOKEN,
                "MATEO_BULK_STATE_DIR": str(work / "state"),
            }
            started = time.monotonic()
            pipeline = subprocess.Popen(
                command, cwd=REPO, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True,
            )  # fmt: skip
            sampler = _RssSampler(pipeline.pid)
            stdout, stderr = pipeline.communicate()
            sampler.stop()
            elapsed = time.monotonic() - started
            # VmHWM of the pipeline's own process: getrusage(RUSAGE_CHILDREN) would report the
            # largest child reaped so far, which need not be the pipeline.
            peak_kib = sampler.peak_kib
            stats = httpx.get(root + "/_sandbox/stats", timeout=30).json()
            final = {
                row["id"]: row for row in httpx.get(root + "/_sandbox/rows", timeout=60).json()
            }
            with (work / "run" / "report.csv").open(newline="", encoding="utf-8") as file:
                report = list(csv.DictReader(file))
    finally:
        sandbox.terminate()
        sandbox.wait(timeout=30)

    wrong = [
        row_id
        for row_id, target in targets.items()
        if final[row_id]["status"] != target["status"]
        or final[row_id]["inbox_id"] != target["inbox_id"]
    ]
    row_numbers = sorted(int(line["row"]) for line in report)
    report_ids = [line["conversation_id"] for line in report]
    outcomes: dict[str, int] = {}
    for line in report:
        outcomes[line["outcome"]] = outcomes.get(line["outcome"], 0) + 1
    report_complete = (
        len(report) == options.rows
        and row_numbers == list(range(1, options.rows + 1))
        and len(set(report_ids)) == options.rows
        and set(report_ids) == set(targets)
    )
    steady = sampler.samples[len(sampler.samples) // 5 :] or sampler.samples
    print(f"pipeline exit code: {pipeline.returncode}")
    print("pipeline summary:\n  " + stdout.strip().replace("\n", "\n  "))
    if stderr.strip():
        print("pipeline stderr:\n  " + stderr.strip().replace("\n", "\n  "))
    print(f"rows: {options.rows:,}  elapsed: {elapsed:,.1f} s")
    print(f"faults seen (sandbox): {json.dumps(stats['faults'], sort_keys=True)}")
    print(f"requests (sandbox): {stats['requests']:,}  by status: {stats['requests_by_status']}")
    print(f"429s: {stats['rate_limited']:,}  max requests in 1 s: {stats['max_requests_in_1s']}")
    print(f"outcomes (report): {json.dumps(outcomes, sort_keys=True)}")
    print(f"peak RSS of the pipeline: {peak_kib / 1024:,.1f} MiB")
    if sampler.samples:
        peak_at = sampler.samples.index(max(sampler.samples)) * 0.5
        print(
            f"RSS sampled every 0.5 s: highest {max(sampler.samples) / 1024:,.1f} MiB at "
            f"{peak_at:,.1f} s of {elapsed:,.1f} s"
        )
    if steady:
        print(
            f"RSS after the first fifth of the run: min {min(steady) / 1024:,.1f} MiB, "
            f"median {statistics.median(steady) / 1024:,.1f} MiB, "
            f"max {max(steady) / 1024:,.1f} MiB ({len(steady)} samples)"
        )
    print(f"final check, table: {len(targets) - len(wrong):,} of {len(targets):,} rows at target")
    print(f"final check, report: {len(report):,} lines, every row once: {report_complete}")
    ok = not wrong and report_complete and pipeline.returncode == 0
    print("FINAL CHECK: " + ("PASS" if ok else "FAIL"))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
