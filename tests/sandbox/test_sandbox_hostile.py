"""The sandbox's hostile answers, each seen through a real httpx client over loopback."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

from pipeline.cli.parser import build_parser
from pipeline.sandbox import Sandbox, SandboxConfig
from pipeline.sandbox.command import config_from_args

HOSTILE = (
    "fault_not_json",
    "fault_object",
    "fault_foreign_rows",
    "fault_huge_body",
    "fault_endless",
    "fault_redirect",
    "fault_bad_retry_after",
)


def _open_rows(sandbox: Sandbox, count: int) -> list[dict[str, Any]]:
    return [row for row in sandbox.rows() if row["status"] == "open"][:count]


def _close(client: httpx.Client, rows: list[dict[str, Any]], **options: Any) -> httpx.Response:
    """PATCH rows to closed as mateo-bulk does: id filter, select, return=representation."""
    ids = [row["id"] for row in rows]
    return client.patch(
        "/conversation",
        params={
            "id": f"eq.{ids[0]}" if len(ids) == 1 else f"in.({','.join(ids)})",
            "select": "id,inbox_id,assignee_id,status",
        },
        json={"status": "closed"},
        headers={"Prefer": "return=representation"},
        **options,
    )


def _unchanged(sandbox: Sandbox, rows: list[dict[str, Any]]) -> bool:
    return all(sandbox.row(row["id"]) == row for row in rows)


def test_not_json_is_a_200_with_a_page_and_changes_nothing(
    sandbox: Sandbox, sandbox_client: httpx.Client
) -> None:
    """fault_not_json=1: 200, a JSON content type, a body that is not JSON; nothing committed."""
    sandbox.configure(fault_not_json=1.0)
    rows = _open_rows(sandbox, 2)
    response = _close(sandbox_client, rows)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    with pytest.raises(ValueError):
        response.json()
    assert _unchanged(sandbox, rows)
    assert sandbox.stats()["faults"] == {"not_json": 1} and sandbox.stats()["updates"] == 0


def test_object_fault_answers_one_unchanged_row_for_many(
    sandbox: Sandbox, sandbox_client: httpx.Client
) -> None:
    """fault_object=1: one bare object (the first row, unchanged) for a 3-row PATCH and a GET."""
    sandbox.configure(fault_object=1.0)
    rows = _open_rows(sandbox, 3)
    body = _close(sandbox_client, rows).json()
    first = min(rows, key=lambda row: row["id"])
    assert isinstance(body, dict) and body["id"] == first["id"] and body["status"] == "open"
    assert set(body) == {"id", "inbox_id", "assignee_id", "status"}
    assert _unchanged(sandbox, rows)
    read = sandbox_client.get(
        "/conversation", params={"id": f"in.({','.join(row['id'] for row in rows)})"}
    )
    assert read.status_code == 200 and isinstance(read.json(), dict)


def test_object_fault_wrapper_shape_and_no_match(
    sandbox: Sandbox, sandbox_client: httpx.Client
) -> None:
    """fault_object_shape=wrapper: {"data": [...], "count": N}; row shape with no match: {}."""
    sandbox.configure(fault_object=1.0, fault_object_shape="wrapper")
    rows = _open_rows(sandbox, 2)
    body = _close(sandbox_client, rows).json()
    assert body["count"] == 2 and {row["id"] for row in body["data"]} == {r["id"] for r in rows}
    sandbox.configure(fault_object_shape="row")
    missing = {"id": "00000000-0000-4000-8000-000000000001"}
    assert _close(sandbox_client, [missing]).json() == {}
    assert _unchanged(sandbox, rows)


def test_foreign_rows_commit_the_asked_rows_and_name_another(
    sandbox: Sandbox, sandbox_client: httpx.Client
) -> None:
    """fault_foreign_rows=1: asked rows committed; the array also names a real, unasked row."""
    sandbox.configure(fault_foreign_rows=1.0)
    rows = _open_rows(sandbox, 2)
    response = _close(sandbox_client, rows)
    assert response.status_code == 200
    named = {row["id"]: row for row in response.json()}
    asked = {row["id"] for row in rows}
    (foreign,) = set(named) - asked
    assert set(named) >= asked
    assert all(sandbox.row(row_id)["status"] == "closed" for row_id in asked)  # type: ignore[index]
    stored = sandbox.row(foreign)
    assert stored is not None and named[foreign]["status"] == stored["status"]
    assert sandbox.stats()["updates"] == 2


def test_foreign_rows_also_come_with_a_204_and_a_get(
    sandbox: Sandbox, sandbox_client: httpx.Client
) -> None:
    """Without Prefer the answer is a 200 array naming only an unasked row; a GET gets one too."""
    sandbox.configure(fault_foreign_rows=1.0)
    (row,) = _open_rows(sandbox, 1)
    response = sandbox_client.patch(
        "/conversation", params={"id": f"eq.{row['id']}"}, json={"status": "closed"}
    )
    assert response.status_code == 200
    assert [named["id"] for named in response.json()] != [row["id"]]
    read = sandbox_client.get("/conversation", params={"id": f"eq.{row['id']}"})
    assert len(read.json()) == 2 and read.json()[0]["id"] == row["id"]


def test_huge_body_is_ten_megabytes_of_valid_json(
    sandbox: Sandbox, sandbox_client: httpx.Client
) -> None:
    """fault_huge_body=1: a 10 MB 200 that parses as the asked rows, unchanged; no commit."""
    sandbox.configure(fault_huge_body=1.0)
    rows = _open_rows(sandbox, 2)
    response = _close(sandbox_client, rows)
    assert response.status_code == 200
    assert len(response.content) == int(response.headers["content-length"]) == 10 * 1024**2
    assert sorted(row["id"] for row in response.json()) == sorted(row["id"] for row in rows)
    assert _unchanged(sandbox, rows)


def test_endless_body_trickles_a_byte_every_100_ms(sandbox: Sandbox) -> None:
    """fault_endless=1: headers at once, then about one byte per 100 ms, never an end."""
    sandbox.configure(fault_endless=1.0)
    rows = _open_rows(sandbox, 1)
    received = b""
    with httpx.Client(
        base_url=sandbox.base_url,
        headers={"Authorization": f"Bearer {sandbox.token}"},
        timeout=5,
    ) as client:
        with client.stream(
            "PATCH",
            "/conversation",
            params={"id": f"eq.{rows[0]['id']}"},
            json={"status": "closed"},
        ) as response:
            assert response.status_code == 200
            started = time.monotonic()
            for chunk in response.iter_raw():
                received += chunk
                if time.monotonic() - started > 0.6:
                    break
    assert received.startswith(b"[") and 3 <= len(received) <= 12
    assert _unchanged(sandbox, rows)
    # The hang-up ends the answer on the server side; the next request is served normally.
    sandbox.configure(fault_endless=0.0)
    with httpx.Client(base_url=sandbox.base_url, timeout=5) as client:
        assert client.get("/conversation").status_code == 401


def test_a_reset_breaks_an_endless_answer_off(sandbox: Sandbox) -> None:
    """A reset ends a trickling answer with a broken read, never with a complete body."""
    sandbox.configure(fault_endless=1.0)
    row_id = _open_rows(sandbox, 1)[0]["id"]
    outcome: list[BaseException | bytes] = []
    trickling = threading.Event()

    def read_forever() -> None:
        with httpx.Client(timeout=10) as client:
            try:
                with client.stream(
                    "PATCH",
                    f"{sandbox.base_url}/conversation",
                    params={"id": f"eq.{row_id}"},
                    json={"status": "closed"},
                    headers={"Authorization": f"Bearer {sandbox.token}"},
                ) as response:
                    body = b""
                    for chunk in response.iter_bytes():
                        body += chunk
                        trickling.set()
                outcome.append(body)
            except httpx.HTTPError as error:
                outcome.append(error)
            finally:
                trickling.set()

    reader = threading.Thread(target=read_forever)
    reader.start()
    # The reset comes once the answer is trickling (a fixed sleep can fall before the request
    # even arrives on a busy machine; the reset then switches the fault off and it succeeds).
    assert trickling.wait(timeout=10)
    sandbox.reset()
    reader.join(timeout=5)
    assert not reader.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], httpx.RemoteProtocolError)


def test_redirect_points_to_another_origin_and_changes_nothing(
    sandbox: Sandbox, sandbox_client: httpx.Client
) -> None:
    """fault_redirect=1: 307 to 127.0.0.2 on the sandbox's port (or --fault-redirect-to)."""
    sandbox.configure(fault_redirect=1.0)
    rows = _open_rows(sandbox, 1)
    response = _close(sandbox_client, rows)
    assert response.status_code == 307
    location = httpx.URL(response.headers["location"])
    assert (location.host, location.port) == ("127.0.0.2", sandbox.port)
    assert location.path == "/steal/api/v1/conversation"
    assert location.params["id"] == f"eq.{rows[0]['id']}"
    sandbox.configure(fault_redirect_to="https://elsewhere.example:8443")
    response = _close(sandbox_client, rows)
    assert response.headers["location"].startswith("https://elsewhere.example:8443/steal/api/")
    assert _unchanged(sandbox, rows) and sandbox.stats()["updates"] == 0


@pytest.mark.parametrize(
    ("kind", "values"),
    [
        ("malformed", ["in a little while"] * 2),
        ("enormous", ["31536000"] * 2),
        ("absurd", ["999999999999"] * 2),
        ("alternate", ["in a little while", "31536000", "999999999999", "in a little while"]),
    ],
)
def test_bad_retry_after_is_malformed_or_enormous(
    sandbox: Sandbox, sandbox_client: httpx.Client, kind: str, values: list[str]
) -> None:
    """fault_bad_retry_after=1: 429 whose Retry-After and ratelimit-reset are no usable wait."""
    sandbox.configure(fault_bad_retry_after=1.0, bad_retry_after=kind, rate=100.0)
    rows = _open_rows(sandbox, 1)
    seen = []
    for _ in values:
        response = _close(sandbox_client, rows)
        assert response.status_code == 429 and response.json()["code"] == "RATE_LIMITED"
        assert response.headers.get_list("ratelimit-reset") == [response.headers["retry-after"]]
        seen.append(response.headers["retry-after"])
    assert seen == values
    assert _unchanged(sandbox, rows)


def test_hostile_faults_are_seeded_draws(sandbox: Sandbox, sandbox_client: httpx.Client) -> None:
    """At 0.3 each, the same seed gives the same sequence of answers; some requests succeed."""

    def statuses() -> list[int]:
        sandbox.reset()
        sandbox.configure(fault_seed=11, fault_not_json=0.3, fault_redirect=0.3)
        rows = _open_rows(sandbox, 1)
        return [_close(sandbox_client, rows).status_code for _ in range(30)]

    first = statuses()
    assert first == statuses()
    assert {200, 307} <= set(first)
    assert set(sandbox.stats()["faults"]) == {"not_json", "redirect"}


def test_hostile_probabilities_are_checked_with_the_other_faults() -> None:
    """Each is a probability; together with the older faults they may not exceed 1."""
    for name in HOSTILE:
        with pytest.raises(ValueError, match=name):
            SandboxConfig().replace(**{name: 1.5})
    with pytest.raises(ValueError, match="must not exceed 1"):
        SandboxConfig(fault_500=0.5, fault_endless=0.6)
    with pytest.raises(ValueError, match="fault_redirect_to"):
        SandboxConfig(fault_redirect_to="ftp://elsewhere")
    assert all(getattr(SandboxConfig(), name) == 0.0 for name in HOSTILE)


def test_every_hostile_switch_is_a_sandbox_flag() -> None:
    """`mateo-bulk sandbox --fault-endless 0.2 --bad-retry-after enormous ...` sets the switches."""
    args = build_parser().parse_args(
        [
            "sandbox",
            *("--fault-endless", "0.2", "--fault-object", "0.1"),
            *("--fault-object-shape", "wrapper", "--bad-retry-after", "enormous"),
            *("--fault-redirect-to", "http://127.0.0.2:9"),
        ]
    )
    config = config_from_args(args)
    assert (config.fault_endless, config.fault_object) == (0.2, 0.1)
    assert config.fault_object_shape == "wrapper" and config.bad_retry_after == "enormous"
    assert config.fault_redirect_to == "http://127.0.0.2:9"
