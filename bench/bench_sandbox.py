"""How many simple PATCH requests a second the sandbox serves on one core.

Starts `mateo-bulk sandbox` in a subprocess pinned to one core (`taskset -c 1`) and drives it
from the other core over keep-alive connections, with wrk when it is installed (a C load
generator, so the figure measures the server) or else aiohttp. Each request is the client's
common case: `PATCH /conversation?id=eq.<uuid>` with a one-key body, no latency, no limits.

    .venv/bin/python bench/bench_sandbox.py [--seconds 5] [--connections 32]

The server's CPU use over the measured run is printed too: near 100% means the figure is the
server's limit, well below means the load generator was the bottleneck.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOKEN = "bench-token"
WARM_UP_SECONDS = 1.0

_WRK_SCRIPT = """
local ids = {}
for line in io.lines("%(ids)s") do ids[#ids + 1] = line end
local counter = 0
wrk.method = "PATCH"
wrk.headers["Authorization"] = "Bearer %(token)s"
wrk.headers["Content-Type"] = "application/json"
request = function()
  counter = counter + 1
  local body = (counter %% 2 == 0) and '{"status":"open"}' or '{"status":"closed"}'
  return wrk.format(nil, "/api/v1/conversation?id=eq." .. ids[(counter %% #ids) + 1], nil, body)
end
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _pinned(command: list[str], core: int) -> list[str]:
    return ["taskset", "-c", str(core), *command] if shutil.which("taskset") else command


def _start_server(port: int, core: int, rows: int) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "pipeline",
        "sandbox",
        "--port",
        str(port),
        "--token",
        TOKEN,
        "--generate",
        str(rows),
    ]
    process = subprocess.Popen(_pinned(command, core), cwd=REPO, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.05)
    process.kill()
    raise SystemExit("the sandbox did not start")


def _ids(base: str) -> list[str]:
    with urllib.request.urlopen(f"{base}/_sandbox/rows") as response:
        return [row["id"] for row in json.loads(response.read())]


def _cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of a process (Linux only)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _run_wrk(
    base: str, ids: list[str], seconds: float, connections: int, core: int
) -> tuple[int, int, float]:
    with tempfile.TemporaryDirectory() as scratch:
        id_file = Path(scratch) / "ids.txt"
        id_file.write_text("\n".join(ids) + "\n")
        script = Path(scratch) / "patch.lua"
        script.write_text(_WRK_SCRIPT % {"ids": id_file, "token": TOKEN})
        command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "-s", str(script), base]
        output = subprocess.run(
            _pinned(command, core), capture_output=True, text=True, check=True
        ).stdout
    total = re.search(r"(\d+) requests in ([\d.]+)(m?s)", output)
    if total is None:
        raise SystemExit(f"could not read wrk's output:\n{output}")
    elapsed = float(total.group(2)) / (1000 if total.group(3) == "ms" else 1)
    failed = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    failures = int(failed.group(1)) if failed else 0
    return int(total.group(1)) - failures, failures, elapsed


async def _run_aiohttp(
    base: str, ids: list[str], seconds: float, connections: int
) -> tuple[int, int, float]:
    import aiohttp  # installed for benchmarking only

    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    bodies = (b'{"status":"closed"}', b'{"status":"open"}')
    done = failed = 0
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=connections), headers=headers
    ) as session:
        stop_at = time.monotonic() + seconds

        async def worker(index: int) -> None:
            nonlocal done, failed
            while time.monotonic() < stop_at:
                url = f"{base}/api/v1/conversation?id=eq.{ids[index % len(ids)]}"
                async with session.patch(url, data=bodies[index % 2]) as response:
                    await response.read()
                    if response.status == 204:
                        done += 1
                    else:
                        failed += 1
                index += connections

        started = time.monotonic()
        await asyncio.gather(*(worker(i) for i in range(connections)))
        return done, failed, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--server-core", type=int, default=1)
    parser.add_argument("--client-core", type=int, default=0)
    parser.add_argument(
        "--client",
        choices=("auto", "wrk", "aiohttp"),
        default="auto",
        help="load generator (auto: wrk when installed, else aiohttp)",
    )
    args = parser.parse_args()
    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "aiohttp"
    if client == "aiohttp" and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.client_core})

    def drive(seconds: float) -> tuple[int, int, float]:
        if client == "wrk":
            return _run_wrk(base, ids, seconds, args.connections, args.client_core)
        return asyncio.run(_run_aiohttp(base, ids, seconds, args.connections))

    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = _start_server(port, args.server_core, args.rows)
    try:
        ids = _ids(base)
        drive(WARM_UP_SECONDS)
        cpu_before = _cpu_seconds(server.pid)
        done, failed, elapsed = drive(args.seconds)
        cpu_after = _cpu_seconds(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=10)
    busy = ""
    if cpu_before is not None and cpu_after is not None:
        busy = f", server CPU {100 * (cpu_after - cpu_before) / elapsed:.0f}% of its core"
    print(
        f"sandbox: {done / elapsed:,.0f} PATCH req/s on one core "
        f"({done:,} answered 204 in {elapsed:.1f} s, {failed} other answers; "
        f"{args.connections} connections, {args.rows:,} rows, load from {client}{busy})"
    )
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
