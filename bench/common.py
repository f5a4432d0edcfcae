"""What the benchmarks share: a sandbox in a subprocess, pinned child runs, tables, results.

Method (bench/README.md, "How it measures"): the server runs on one core and every client on
the other, so a client's speed is never its own server's loss; figures that compare clients are
taken side by side in one session, in alternating order, and reported as medians, because the
same run differs by several percent from one session to the next.
"""

from __future__ import annotations

import atexit
import csv
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
PYTHON = sys.executable
#: Cores of the two sides: the sandbox on one, every client on the other.
SERVER_CPU = int(os.environ.get("BENCH_SERVER_CPU", "1"))
CLIENT_CPU = int(os.environ.get("BENCH_CLIENT_CPU", "0"))
TOKEN = "bench-token"
#: The columns our input files have, the names `mateo-bulk run` reads by default.
INPUT_COLUMNS = ("conversation_id", "inbox_id", "assignee_id", "status")
_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pinned(command: Sequence[str], cpu: int) -> list[str]:
    return ["taskset", "-c", str(cpu), *command]


# --- the sandbox --------------------------------------------------------------------------------


class SandboxProcess:
    """`python -m pipeline sandbox` on a free port, pinned to the server core, as a context."""

    def __init__(self, *flags: str, cpu: int = SERVER_CPU, log: Path | None = None) -> None:
        self.port = free_port()
        self.root_url = f"http://127.0.0.1:{self.port}"
        self.base_url = f"{self.root_url}/api/v1"
        self.token = TOKEN
        command = [
            PYTHON,
            "-m",
            "pipeline",
            "sandbox",
            "--port",
            str(self.port),
            "--token",
            TOKEN,
            *flags,
        ]
        self.command = command
        self._stderr = open(log or os.devnull, "w")  # noqa: SIM115 (closed in stop)
        self._process = subprocess.Popen(
            pinned(command, cpu), cwd=REPO, stdout=subprocess.DEVNULL, stderr=self._stderr
        )

    def __enter__(self) -> SandboxProcess:
        deadline = time.monotonic() + 120
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"the sandbox exited ({self._process.returncode}): {' '.join(self.command)}"
                )
            try:
                self.stats()
                return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("the sandbox did not answer within 120 s") from None
                time.sleep(0.1)

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._stderr.close()

    def _call(self, method: str, path: str) -> Any:
        request = urllib.request.Request(self.root_url + path, method=method)
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.load(response)

    def stats(self) -> dict[str, Any]:
        return dict(self._call("GET", "/_sandbox/stats"))

    def rows(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/_sandbox/rows"))

    def reset_stats(self) -> None:
        self._call("POST", "/_sandbox/reset-stats")

    def cpu_seconds(self) -> float:
        """User + system CPU the server process has used so far."""
        fields = Path(f"/proc/{self._process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS


# --- pinned child runs --------------------------------------------------------------------------


@dataclass
class ChildRun:
    """A finished child process: exit code, wall time, its own CPU and peak memory."""

    command: list[str]
    returncode: int
    wall: float
    user: float
    system: float
    max_rss_mib: float
    stdout: str
    stderr: str
    #: CPU of every other process on the machine during the run, in cores (noise check).
    other_load: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu(self) -> float:
        return self.user + self.system


def _busy_seconds() -> float:
    """CPU seconds all cores have spent busy since boot (from /proc/stat)."""
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(p) for p in parts[:8])
    return (user + nice + system + irq + softirq + steal) / _TICKS


def run_child(
    command: Sequence[str],
    *,
    cpu: int | None = CLIENT_CPU,
    env: dict[str, str] | None = None,
    timeout: float = 3600,
    server: SandboxProcess | None = None,
) -> ChildRun:
    """Run `command` (pinned to `cpu`) to its end and measure it with wait4's rusage."""
    full = pinned(command, cpu) if cpu is not None else list(command)
    out_path = RESULTS_DIR / f".child-{os.getpid()}.out"
    err_path = RESULTS_DIR / f".child-{os.getpid()}.err"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    busy_before = _busy_seconds()
    server_before = server.cpu_seconds() if server else 0.0
    with out_path.open("w") as out, err_path.open("w") as err:
        started = time.perf_counter()
        process = subprocess.Popen(full, cwd=REPO, env=env, stdout=out, stderr=err)
        deadline = started + timeout
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                process.kill()
            time.sleep(0.005)
        wall = time.perf_counter() - started
    process.returncode = os.waitstatus_to_exitcode(status)
    busy = _busy_seconds() - busy_before
    server_cpu = (server.cpu_seconds() - server_before) if server else 0.0
    other = max(0.0, busy - usage.ru_utime - usage.ru_stime - server_cpu) / wall
    run = ChildRun(
        command=full,
        returncode=process.returncode,
        wall=wall,
        user=usage.ru_utime,
        system=usage.ru_stime,
        max_rss_mib=usage.ru_maxrss / 1024,
        stdout=out_path.read_text(),
        stderr=err_path.read_text(),
        other_load=other,
    )
    if server:
        run.extra["server_cpu_util"] = server_cpu / wall
    out_path.unlink()
    err_path.unlink()
    return run


def mateo_bulk(*arguments: str) -> list[str]:
    """The `mateo-bulk` command line, run with this interpreter."""
    return [PYTHON, "-m", "pipeline", *arguments]


def client_env(token: str = TOKEN) -> dict[str, str]:
    """The environment of a client run: the token, and a daily-request ledger of its own.

    The pipeline counts every request in a per-account ledger (10,000 a day, Mateo's quota);
    each benchmark run gets a fresh one, so runs never spend each other's budget (or yours).
    """
    env = dict(os.environ)
    env["MATEO_API_TOKEN"] = token
    env.pop("MATEO_BASE_URL", None)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    state = Path(tempfile.mkdtemp(prefix=".state-", dir=RESULTS_DIR))
    atexit.register(shutil.rmtree, state, True)
    env["MATEO_BULK_STATE_DIR"] = str(state)
    return env


# --- input files and checks ---------------------------------------------------------------------


def write_input(path: Path, rows: Iterable[Sequence[str | None]]) -> int:
    """Write an input CSV (conversation_id, inbox_id, assignee_id, status); None = empty cell."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(INPUT_COLUMNS)
        for row in rows:
            writer.writerow(["" if cell is None else cell for cell in row])
            count += 1
    return count


def read_targets(path: Path) -> dict[str, dict[str, str | None]]:
    """Conversation id -> the fields its row sets (`null` = None), from an input CSV."""
    targets: dict[str, dict[str, str | None]] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        for record in csv.DictReader(handle):
            wanted = {
                name: (None if record[name].lower() == "null" else record[name])
                for name in INPUT_COLUMNS[1:]
                if record[name]
            }
            targets[record["conversation_id"]] = wanted
    return targets


def mismatches(targets: dict[str, dict[str, str | None]], rows: list[dict[str, Any]]) -> list[str]:
    """Ids whose final row in the sandbox does not hold every target value (or is missing)."""
    by_id = {row["id"]: row for row in rows}
    wrong = []
    for conversation_id, wanted in targets.items():
        row = by_id.get(conversation_id)
        if row is None or any(row.get(name) != value for name, value in wanted.items()):
            wrong.append(conversation_id)
    return wrong


# --- output -------------------------------------------------------------------------------------


def print_table(title: str, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print(
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w)
            for i, (h, w) in enumerate(zip(headers, widths, strict=True))
        )
    )
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    sys.stdout.flush()


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value >= 100:
            return f"{value:,.0f}"
        if value >= 10:
            return f"{value:.1f}"
        return f"{value:.3f}" if value < 1 else f"{value:.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def spread(values: Sequence[float]) -> str:
    return f"{median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    packages: dict[str, str | None] = {}
    for name in (
        "mateo-bulk",
        "httpx",
        "httpcore",
        "httpx-aiohttp",
        "aiohttp",
        "anyio",
        "sniffio",
        "uvloop",
        "uvicorn",
        "pandas",
        "pyarrow",
    ):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = None
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    dirty = bool(
        subprocess.run(
            ["git", "status", "--porcelain", "pipeline"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
    )
    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "server_cpu": SERVER_CPU,
        "client_cpu": CLIENT_CPU,
        "commit": commit,
        "pipeline_has_uncommitted_changes": dirty,
        "packages": packages,
        "load_average": os.getloadavg(),
    }


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Save a figure's result as bench/results/<name>-<UTC time>.json (and <name>-latest.json)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    document = {"benchmark": name, "measured_at": stamp, "machine": machine(), **payload}
    text = json.dumps(document, indent=2, default=str) + "\n"
    path = RESULTS_DIR / f"{name}-{stamp}.json"
    path.write_text(text)
    (RESULTS_DIR / f"{name}-latest.json").write_text(text)
    print(f"\nresult written to {path.relative_to(REPO)}")
    return path


def own_cpu_seconds() -> float:
    """User + system CPU of this process so far, every thread included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime
