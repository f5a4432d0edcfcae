"""How many simple PATCH requests a second the sandbox serves on one core.

Starts `mateo-bulk sandbox` in a subprocess pinned to one core (`taskset -c 1`) and drives it
from the other core with aiohttp over keep-alive connections. Each request is the client's
common case: `PATCH /conversation?id=eq.<uuid>` with a one-key body, no latency, no limits.

    /work/venv/bin/python bench/bench_sandbox.py [--seconds 5] [--connections 32]

aiohttp is used here only: it is a faster load generator than httpx, so the figure measures
the server rather than the client.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
TOKEN = "bench-token"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _start_server(port: int, server_core: int, rows: int) -> subprocess.Popen[bytes]:
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
    if shutil.which("taskset"):
        command = ["taskset", "-c", str(server_core), *command]
    process = subprocess.Popen(command, cwd=REPO, stderr=subprocess.DEVNULL)
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


async def _drive(base: str, seconds: float, connections: int) -> tuple[int, int, float]:
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        async with session.get(f"{base}/_sandbox/rows") as response:
            ids = [row["id"] for row in await response.json()]
        bodies = [b'{"status":"closed"}', b'{"status":"open"}']
        done = 0
        failed = 0
        stop_at = 0.0

        async def worker(offset: int) -> None:
            nonlocal done, failed
            index = offset
            while time.monotonic() < stop_at:
                row_id = ids[index % len(ids)]
                url = f"{base}/api/v1/conversation?id=eq.{row_id}"
                async with session.patch(url, data=bodies[index % 2]) as response:
                    await response.read()
                    if response.status == 204:
                        done += 1
                    else:
                        failed += 1
                index += connections

        # Warm up the connections and the server's caches, then measure.
        stop_at = time.monotonic() + 0.5
        await asyncio.gather(*(worker(i) for i in range(connections)))
        done = failed = 0
        started = time.monotonic()
        stop_at = started + seconds
        await asyncio.gather(*(worker(i) for i in range(connections)))
        return done, failed, time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--server-core", type=int, default=1)
    parser.add_argument("--client-core", type=int, default=0)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {args.client_core})
    port = _free_port()
    server = _start_server(port, args.server_core, args.rows)
    try:
        done, failed, elapsed = asyncio.run(
            _drive(f"http://127.0.0.1:{port}", args.seconds, args.connections)
        )
    finally:
        server.terminate()
        server.wait(timeout=10)
    rate = done / elapsed
    print(
        f"sandbox: {rate:,.0f} PATCH req/s on one core "
        f"({done:,} answered 204 in {elapsed:.1f} s, {failed} other answers, "
        f"{args.connections} connections, {args.rows:,} rows)"
    )
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
