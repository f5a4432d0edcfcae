"""Injected faults, latency, the request cut-off and the request log."""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from pipeline.sandbox import Sandbox, SandboxConfig, running_sandbox


def _first(sandbox: Sandbox) -> dict[str, object]:
    return next(row for row in sandbox.rows() if row["status"] == "open")


def _close(client: httpx.Client, row_id: object) -> httpx.Response:
    return client.patch("/conversation", params={"id": f"eq.{row_id}"}, json={"status": "closed"})


def test_fault_500_is_json_and_changes_nothing(
    sandbox: Sandbox, sandbox_client: httpx.Client
) -> None:
    """fault_500=1: every answer is a 500 with the JSON error body; no row changes."""
    sandbox.configure(fault_500=1.0)
    row = _first(sandbox)
    response = _close(sandbox_client, row["id"])
    assert response.status_code == 500 and response.json()["status"] == 500
    assert sandbox.row(row["id"]) == row  # type: ignore[arg-type]
    assert sandbox.stats()["faults"] == {"500": 1}


def test_fault_502_is_an_html_page(sandbox: Sandbox, sandbox_client: httpx.Client) -> None:
    """fault_502=1: a gateway's HTML page, not JSON."""
    sandbox.configure(fault_502=1.0)
    response = _close(sandbox_client, _first(sandbox)["id"])
    assert response.status_code == 502
    assert response.headers["content-type"].startswith("text/html")
    assert "<title>502 Bad Gateway</title>" in response.text


def test_fault_503_has_retry_after(sandbox: Sandbox, sandbox_client: httpx.Client) -> None:
    """fault_503=1: 503 with Retry-After set by fault_503_retry_after; nothing applied."""
    sandbox.configure(fault_503=1.0, fault_503_retry_after=7)
    row = _first(sandbox)
    response = _close(sandbox_client, row["id"])
    assert response.status_code == 503 and response.headers["retry-after"] == "7"
    assert sandbox.row(row["id"]) == row  # type: ignore[arg-type]


def test_applied_then_503(sandbox: Sandbox, sandbox_client: httpx.Client) -> None:
    """fault_applied_503=1: the client sees 503 but the update was committed."""
    sandbox.configure(fault_applied_503=1.0)
    row = _first(sandbox)
    response = _close(sandbox_client, row["id"])
    assert response.status_code == 503
    assert sandbox.row(row["id"])["status"] == "closed"  # type: ignore[index]
    assert sandbox.stats()["updates"] == 1


@pytest.mark.parametrize("prefer", [None, "return=representation"])
def test_dropped_connection_mid_response(
    sandbox: Sandbox, sandbox_client: httpx.Client, prefer: str | None
) -> None:
    """fault_drop=1: the client gets a protocol error mid-body; the update was committed."""
    sandbox.configure(fault_drop=1.0)
    row = _first(sandbox)
    headers = {"Prefer": prefer} if prefer else {}
    with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        sandbox_client.patch(
            "/conversation",
            params={"id": f"eq.{row['id']}"},
            json={"status": "closed"},
            headers=headers,
        )
    assert sandbox.row(row["id"])["status"] == "closed"  # type: ignore[index]
    sandbox.configure(fault_drop=0.0)
    assert sandbox_client.get("/conversation").status_code == 200


def test_faults_repeat_with_the_same_seed(sandbox: Sandbox, sandbox_client: httpx.Client) -> None:
    """The same fault seed gives the same sequence of answers; another seed a different one."""

    def statuses(seed: int) -> list[int]:
        sandbox.reset()
        sandbox.configure(fault_500=0.3, fault_503=0.3, fault_seed=seed)
        return [sandbox_client.get("/conversation").status_code for _ in range(30)]

    first = statuses(11)
    assert first == statuses(11)
    assert first != statuses(12)
    assert {200, 500, 503} <= set(first)


def test_fixed_latency_is_added_without_blocking(
    sandbox: Sandbox, sandbox_client: httpx.Client
) -> None:
    """latency_ms delays each answer, and concurrent requests wait in parallel.

    The sandbox's own gauge says all four waited at the same time: a clock in the test would
    also count the time a busy machine takes to start its threads.
    """
    sandbox.configure(latency_ms=500)
    durations: list[float] = []
    # The clients (each builds an SSL context) are made and the threads started before the
    # clock starts, so only the requests are timed, not set-up slowed by a busy machine.
    clients = [
        httpx.Client(
            base_url=sandbox.base_url, headers={"Authorization": f"Bearer {sandbox.token}"}
        )
        for _ in range(4)
    ]
    go = threading.Barrier(len(clients) + 1)

    def one(client: httpx.Client) -> None:
        go.wait()
        started = time.monotonic()
        client.get("/conversation")
        durations.append(time.monotonic() - started)

    threads = [threading.Thread(target=one, args=(client,)) for client in clients]
    for thread in threads:
        thread.start()
    go.wait()
    for thread in threads:
        thread.join()
    for client in clients:
        client.close()
    assert len(durations) == 4 and min(durations) >= 0.49
    assert sandbox.stats()["max_in_flight"] == 4


@pytest.mark.parametrize("distribution", ["uniform", "exponential"])
def test_latency_distributions_vary(
    sandbox: Sandbox, sandbox_client: httpx.Client, distribution: str, tmp_path: Path
) -> None:
    """uniform and exponential latency vary around the mean."""
    sandbox.configure(latency_ms=20, latency_distribution=distribution)
    # Each answer's time as the server took it (request log): a client's clock would add the
    # delays of a machine busy with other tests, tens of milliseconds a request.
    log = tmp_path / "requests.jsonl"
    sandbox.state.open_request_log(log)
    try:
        for _ in range(12):
            sandbox_client.get("/conversation", params={"limit": "1"})
    finally:
        sandbox.state.close_request_log()
    durations = [json.loads(line)["duration_ms"] / 1000 for line in log.read_text().splitlines()]
    assert len(durations) == 12
    assert max(durations) - min(durations) > 0.005
    assert sum(durations) / len(durations) < 0.1


def test_slow_answer_triggers_a_client_timeout(
    sandbox: Sandbox, sandbox_client: httpx.Client
) -> None:
    """fault_slow=1: the answer takes slow_seconds, so a client with a short timeout gives up."""
    sandbox.configure(fault_slow=1.0, slow_seconds=30)
    row = _first(sandbox)
    with pytest.raises(httpx.ReadTimeout):
        sandbox_client.patch(
            "/conversation",
            params={"id": f"eq.{row['id']}"},
            json={"status": "closed"},
            timeout=0.3,
        )
    assert sandbox.stats()["faults"] == {"slow": 1}
    # A reset wakes the sleeping request, which then changes nothing.
    sandbox.reset()
    time.sleep(0.05)
    assert sandbox.row(row["id"]) == row  # type: ignore[arg-type]


@pytest.mark.parametrize("commits", [True, False])
def test_cutoff_answers_after_the_limit(
    sandbox: Sandbox, sandbox_client: httpx.Client, commits: bool
) -> None:
    """A request slower than cutoff_seconds gets cutoff_status then; committed or not."""
    sandbox.configure(
        latency_ms=2000, cutoff_seconds=0.2, cutoff_status=504, cutoff_commits=commits
    )
    row = _first(sandbox)
    started = time.monotonic()
    response = _close(sandbox_client, row["id"])
    elapsed = time.monotonic() - started
    assert response.status_code == 504 and response.json()["code"] == "57014"
    assert 0.19 <= elapsed < 1.0
    status = sandbox.row(row["id"])["status"]  # type: ignore[index]
    assert status == ("closed" if commits else "open")


def test_cutoff_html_body_and_status(sandbox: Sandbox, sandbox_client: httpx.Client) -> None:
    """cutoff_body=html with cutoff_status=500 answers a 500 HTML page."""
    sandbox.configure(latency_ms=1000, cutoff_seconds=0.1, cutoff_status=500, cutoff_body="html")
    response = sandbox_client.get("/conversation")
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("text/html")


def test_fast_requests_are_not_cut_off(sandbox: Sandbox, sandbox_client: httpx.Client) -> None:
    """Below the cut-off, the answer is the normal one."""
    sandbox.configure(latency_ms=50, cutoff_seconds=2.0)
    assert sandbox_client.get("/conversation").status_code == 200


def test_request_log_never_holds_the_token(tmp_path: Path) -> None:
    """The JSON-lines log records each request, the ids it updated, and never the token."""
    log = tmp_path / "requests.jsonl"
    token = "very-secret-token-123"
    with running_sandbox(SandboxConfig(token=token), generate=5, request_log=log) as sandbox:
        row_id = sandbox.rows()[0]["id"]
        with httpx.Client(
            base_url=sandbox.base_url, headers={"Authorization": f"Bearer {token}"}
        ) as client:
            client.patch("/conversation", params={"id": f"eq.{row_id}"}, json={"status": "closed"})
            client.get("/conversation", params={"apikey": token})
        httpx.get(sandbox.base_url + "/conversation", headers={"Authorization": "Bearer wrong"})
    text = log.read_text()
    assert token not in text
    entries = [json.loads(line) for line in text.splitlines()]
    assert [e["status"] for e in entries] == [204, 400, 403]  # apikey= is not a column
    assert entries[0]["ids_updated"] == [row_id] and entries[0]["method"] == "PATCH"
    assert set(entries[0]) >= {"time", "method", "path", "status", "ids_updated", "duration_ms"}
    assert "[redacted]" in entries[1]["path"]


LOG_FIELDS = {
    "time",
    "arrived",
    "duration_ms",
    "method",
    "path",
    "query",
    "status",
    "ids_matched",
    "ids_updated",
    "committed",
}


def test_request_log_is_evidence_of_every_write(tmp_path: Path) -> None:
    """Each line: method, raw query, status, rows matched and changed, committed, and when."""
    log = tmp_path / "requests.jsonl"
    token = "s3cret/+key=1"
    with running_sandbox(SandboxConfig(token=token), generate=8, request_log=log) as sandbox:
        a, b, c, d, e, f = (row["id"] for row in sandbox.rows()[:6])
        sent: list[str] = []
        with httpx.Client(
            base_url=sandbox.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=10
        ) as client:

            def patch(ids: str, headers: dict[str, str] | None = None) -> None:
                try:
                    response = client.patch(
                        f"/conversation?id={ids}", json={"status": "closed"}, headers=headers
                    )
                    sent.append(response.request.url.query.decode())
                except httpx.HTTPError as error:
                    sent.append(error.request.url.query.decode())

            read = client.get(f"/conversation?select=id&id=in.(%22{a}%22,{b})&limit=5")
            sent.append(read.request.url.query.decode())
            patch(f"eq.{a}")
            patch("not.in.()")
            patch(f"in.({a},{b})", headers={"Prefer": "handling=strict, max-affected=1"})
            sandbox.configure(fault_applied_503=1.0)
            patch(f"eq.{c}")
            sandbox.configure(fault_applied_503=0.0, latency_ms=1000, cutoff_seconds=0.05)
            patch(f"eq.{d}")
            sandbox.configure(cutoff_commits=False)
            patch(f"eq.{e}")
            sandbox.configure(latency_ms=0, cutoff_seconds=None, fault_drop=1.0)
            patch(f"eq.{f}")
            sandbox.configure(fault_drop=0.0)
            leaked = client.get("/conversation", params={"apikey": token})
            sent.append(leaked.request.url.query.decode())
    text = log.read_text()
    entries = [json.loads(line) for line in text.splitlines()]
    summary = [
        (
            entry["method"],
            entry["status"],
            entry.get("fault"),
            entry["committed"],
            entry["ids_matched"],
            entry["ids_updated"],
        )
        for entry in entries
    ]
    assert summary == [
        ("GET", 200, None, False, [], []),
        ("PATCH", 204, None, True, [a], [a]),
        ("PATCH", 400, None, False, [], []),  # no id guard: refused before the table
        ("PATCH", 400, None, False, sorted([a, b]), []),  # max-affected: rolled back
        ("PATCH", 503, "applied_503", True, [c], [c]),
        ("PATCH", 504, "cutoff", True, [d], [d]),
        ("PATCH", 504, "cutoff", False, [], []),
        ("PATCH", 200, "drop", True, [f], [f]),  # the body broke off; the commit stands
        ("GET", 400, None, False, [], []),
    ]
    assert all(
        set(entry) == LOG_FIELDS | ({"fault"} if "fault" in entry else set()) for entry in entries
    )
    assert [entry["query"] for entry in entries[:-1]] == sent[:-1]
    assert "%22" in entries[0]["query"]  # as received: still percent-encoded
    assert all(entry["path"] == f"/api/v1/conversation?{entry['query']}" for entry in entries)
    arrivals = [entry["arrived"] for entry in entries]
    assert arrivals == sorted(arrivals)
    assert all(datetime.fromisoformat(entry["time"]).tzinfo is not None for entry in entries)
    assert all(entry["duration_ms"] >= 0 for entry in entries)
    assert entries[5]["duration_ms"] >= 50  # the cut-off's wait
    # The token, however a client spells it in a URL, is never written.
    assert "[redacted]" in entries[-1]["query"] and sent[-1] != entries[-1]["query"]
    for entry in entries:
        assert token not in urllib.parse.unquote_plus(entry["query"])
    assert token not in text
