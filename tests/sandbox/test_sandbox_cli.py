"""`mateo-bulk sandbox` as a user runs it: a real process on a real port."""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from pipeline.cli.main import main
from pipeline.cli.parser import build_parser
from pipeline.sandbox import SandboxConfig
from pipeline.sandbox.command import flag_for
from tests.helpers import REPO


def _ephemeral_ports() -> range:
    try:
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        low, high = 32768, 60999  # Linux's default
    return range(low, high + 1)


def _free_port() -> int:
    """A port free now, for a `mateo-bulk sandbox` process to listen on (it takes no port 0).

    Chosen below the kernel's ephemeral range when it can be: in every pytest-xdist worker at
    once, in-process sandboxes bind port 0 and client connections take local ports from that
    range, so a port from there can be taken before the process (a second away) binds it, and
    the readiness poll could then reach another worker's sandbox. Each worker searches a block
    of its own, so workers never pick the same port.
    """
    ephemeral = _ephemeral_ports()
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    first = 20_000 + 200 * (int(worker) if worker.isdigit() else 0)
    candidates = [port for port in range(first, first + 200) if port not in ephemeral]
    random.Random().shuffle(candidates)
    for port in [*candidates, 0]:  # 0: the kernel's choice, if nothing outside the range is free
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(probe.getsockname()[1])
    raise AssertionError("no free port")


def _start(*flags: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "sandbox", "--port", str(port), *flags],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    root = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            httpx.get(root + "/_sandbox/stats", timeout=1)
            return process, root
        except httpx.TransportError:
            if process.poll() is not None:
                break
            time.sleep(0.05)
    process.kill()
    _, stderr = process.communicate()
    raise AssertionError(f"the sandbox did not start: {stderr}")


@pytest.fixture
def served() -> Iterator[tuple[subprocess.Popen[str], str]]:
    process, root = _start("--generate", "20", "--rate", "50", "--fault-seed", "3")
    yield process, root
    if process.poll() is None:
        process.kill()
        process.communicate()


def test_cli_serves_the_api(served: tuple[subprocess.Popen[str], str]) -> None:
    """The command serves /api/v1 with the default token and stops cleanly on SIGINT."""
    process, root = served
    headers = {"Authorization": "Bearer sandbox-token"}
    rows = httpx.get(root + "/api/v1/conversation", headers=headers).json()
    assert len(rows) == 20
    response = httpx.patch(
        root + "/api/v1/conversation",
        params={"id": f"eq.{rows[0]['id']}"},
        json={"status": "archived"},
        headers={**headers, "Prefer": "return=representation"},
    )
    assert response.status_code == 200 and response.json()[0]["status"] == "archived"
    assert response.headers["ratelimit-limit"] == "50"
    assert httpx.get(root + "/_sandbox/stats").json()["updates"] == 1
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0
    assert "Traceback" not in stderr and "serving 20 generated conversations" in stderr


def test_cli_token_from_environment_and_request_log(tmp_path: Path) -> None:
    """MATEO_SANDBOX_TOKEN sets the token, and --request-log never writes it."""
    log = tmp_path / "log.jsonl"
    process, root = _start("--request-log", str(log), env={"MATEO_SANDBOX_TOKEN": "env-secret"})
    try:
        url = root + "/api/v1/conversation"
        assert httpx.get(url, headers={"Authorization": "Bearer sandbox-token"}).status_code == 403
        ok = httpx.get(url, headers={"Authorization": "Bearer env-secret"})
        assert ok.status_code == 200 and len(ok.json()) == 50
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=10)
    text = log.read_text()
    assert len(text.splitlines()) == 2 and "env-secret" not in text


@pytest.mark.parametrize(
    "flags",
    [
        ["--rate", "-1"],
        ["--rate", "fast"],
        ["--fault-500", "2"],
        ["--object-response", "maybe"],
        ["--seed", "no/such/file.csv"],
        ["--generate", "-5"],
        ["--cutoff-status", "200"],
    ],
)
def test_bad_flags_exit_2_without_traceback(flags: list[str]) -> None:
    """A bad flag value: exit 2 and a short message on stderr, no traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "sandbox", "--port", str(_free_port()), *flags],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(("mateo-bulk", "usage"))


def test_missing_default_seed_is_explained(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without sample_data/ anywhere, the command says where it looked and what to pass."""
    monkeypatch.setattr("pipeline.sandbox.command.find_default_seed", lambda: None)
    assert main(["sandbox", "--port", "1"]) == 2
    message = capsys.readouterr().err
    assert "sample_data/conversations.csv was not found" in message and "--generate" in message


def test_every_switch_has_a_flag() -> None:
    """Each SandboxConfig field is a documented flag of `mateo-bulk sandbox`."""
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    help_text = subparsers.choices["sandbox"].format_help()  # type: ignore[attr-defined]
    for spec in dataclasses.fields(SandboxConfig):
        assert flag_for(spec) in help_text, spec.name


def test_cli_stops_cleanly_on_sigterm(served: tuple[subprocess.Popen[str], str]) -> None:
    """SIGTERM stops the server with exit 0, like Ctrl+C."""
    process, _ = served
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 0 and "Traceback" not in stderr
