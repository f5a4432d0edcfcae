"""Each switch for an unknown of the real API changes exactly the answer it names."""

from __future__ import annotations

import httpx
import pytest

from pipeline.sandbox import Sandbox, SandboxConfig

UNKNOWN_UUID = "00000000-0000-4000-8000-00000000abcd"
REPRESENTATION = {"Prefer": "return=representation"}


def _ids(sandbox: Sandbox, n: int) -> list[str]:
    return [row["id"] for row in sandbox.rows()[:n]]


def _in(ids: list[str]) -> str:
    return "in.(" + ",".join(ids) + ")"


def _patch(client: httpx.Client, ids: list[str], body: dict[str, object], **kwargs: object):
    params = {"id": _in(ids), "select": "id,status"}
    return client.patch("/conversation", params=params, json=body, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("mode", "n", "expected"),
    [
        ("off", 1, "array"),
        ("one", 1, "object"),
        ("one", 2, "array"),
        ("first", 2, "object"),
        ("first", 0, "null"),
    ],
)
def test_object_response(
    sandbox: Sandbox, sandbox_client: httpx.Client, mode: str, n: int, expected: str
) -> None:
    """object_response picks array, bare object, or first row (null when none) for the body."""
    sandbox.configure(object_response=mode)
    ids = _ids(sandbox, n) or [UNKNOWN_UUID]
    response = _patch(sandbox_client, ids, {"status": "closed"}, headers=REPRESENTATION)
    assert response.status_code == 200
    body = response.json()
    if expected == "array":
        assert isinstance(body, list) and len(body) == n
    elif expected == "object":
        assert body == {"id": sorted(ids)[0], "status": "closed"}
    else:
        assert body is None
    # Every matched row was updated, whatever the body shows.
    assert sandbox.stats()["updates"] == n


def test_select_alone_brings_a_body_only_with_the_switch(
    sandbox: Sandbox, sandbox_client: httpx.Client
) -> None:
    """Plain PostgREST ignores ?select= on a write; select_returns_body answers with rows."""
    ids = _ids(sandbox, 1)
    assert _patch(sandbox_client, ids, {"status": "closed"}).status_code == 204
    sandbox.configure(select_returns_body=True)
    response = _patch(sandbox_client, ids, {"status": "archived"})
    assert response.status_code == 200
    assert response.json() == [{"id": ids[0], "status": "archived"}]
    no_select = sandbox_client.patch("/conversation", params={"id": f"eq.{ids[0]}"}, json={})
    assert no_select.status_code == 204


def test_zero_match_404(sandbox: Sandbox, sandbox_client: httpx.Client) -> None:
    """zero_match_404: a PATCH matching nothing is 404 with an error body; a match stays 200."""
    sandbox.configure(zero_match_404=True)
    missing = _patch(sandbox_client, [UNKNOWN_UUID], {"status": "closed"}, headers=REPRESENTATION)
    assert missing.status_code == 404 and missing.json()["code"] == "PGRST116"
    found = _patch(sandbox_client, _ids(sandbox, 1), {"status": "closed"}, headers=REPRESENTATION)
    assert found.status_code == 200


def test_forced_single_object_rolls_back_multi_row_patches(
    sandbox: Sandbox, sandbox_client: httpx.Client
) -> None:
    """force_single_object: 406 PGRST116 and nothing changed for 2 rows or 0; one row is fine."""
    sandbox.configure(force_single_object=True)
    ids = _ids(sandbox, 2)
    before = sandbox.rows()
    for target in (ids, [UNKNOWN_UUID]):
        response = _patch(sandbox_client, target, {"status": "archived"}, headers=REPRESENTATION)
        assert response.status_code == 406 and response.json()["code"] == "PGRST116"
    assert sandbox.rows() == before
    single = _patch(sandbox_client, ids[:1], {"status": "archived"}, headers=REPRESENTATION)
    assert single.status_code == 200 and single.json() == {"id": ids[0], "status": "archived"}


def test_single_object_accept_header_from_the_client(
    sandbox: Sandbox, sandbox_client: httpx.Client
) -> None:
    """Without the switch, the client's own object Accept header has the same effect."""
    accept = {"Accept": "application/vnd.pgrst.object+json", **REPRESENTATION}
    response = _patch(sandbox_client, _ids(sandbox, 2), {"status": "archived"}, headers=accept)
    assert response.status_code == 406
    assert response.json()["details"] == "The result contains 2 rows"


def test_drop_content_range(sandbox: Sandbox, sandbox_client: httpx.Client) -> None:
    """drop_content_range removes the header from PATCH and GET answers."""
    ids = _ids(sandbox, 2)
    assert _patch(sandbox_client, ids, {}).headers["content-range"] == "*/*"
    sandbox.configure(drop_content_range=True)
    assert "content-range" not in _patch(sandbox_client, ids, {"status": "open"}).headers
    assert "content-range" not in sandbox_client.get("/conversation").headers


def test_drop_prefer(sandbox: Sandbox, sandbox_client: httpx.Client) -> None:
    """drop_prefer: return=representation never reaches PostgREST, so the answer is 204."""
    sandbox.configure(drop_prefer=True)
    response = _patch(
        sandbox_client, _ids(sandbox, 1), {"status": "closed"}, headers=REPRESENTATION
    )
    assert response.status_code == 204 and "preference-applied" not in response.headers


def test_max_affected_with_strict_handling(sandbox: Sandbox, sandbox_client: httpx.Client) -> None:
    """handling=strict, max-affected=1 refuses a 2-row PATCH with PGRST124 and rolls back."""
    before = sandbox.rows()
    response = _patch(
        sandbox_client,
        _ids(sandbox, 2),
        {"status": "archived"},
        headers={"Prefer": "handling=strict, max-affected=1"},
    )
    assert response.status_code == 400 and response.json()["code"] == "PGRST124"
    assert sandbox.rows() == before
    lenient = _patch(
        sandbox_client,
        _ids(sandbox, 2),
        {"status": "archived"},
        headers={"Prefer": "max-affected=1"},
    )
    assert lenient.status_code == 204


def test_default_status_open(sandbox: Sandbox, sandbox_client: httpx.Client) -> None:
    """default_status_open: a body without status reopens the conversation."""
    row = next(row for row in sandbox.rows() if row["status"] == "closed")
    inbox = row["inbox_id"]
    params = {"id": f"eq.{row['id']}"}
    sandbox_client.patch("/conversation", params=params, json={"inbox_id": inbox})
    assert sandbox.row(row["id"])["status"] == "closed"  # type: ignore[index]
    sandbox.configure(default_status_open=True)
    sandbox_client.patch("/conversation", params=params, json={"inbox_id": inbox})
    assert sandbox.row(row["id"])["status"] == "open"  # type: ignore[index]


def test_postgrest_error_body(sandbox: Sandbox, sandbox_client: httpx.Client) -> None:
    """error_body=postgrest sends code, message, details, hint and no status."""
    sandbox.configure(error_body="postgrest")
    response = sandbox_client.patch("/conversation", params={"id": "eq.x"}, json={})
    assert set(response.json()) == {"code", "message", "details", "hint"}


def test_max_url_length_gives_414_html(sandbox: Sandbox, sandbox_client: httpx.Client) -> None:
    """Past max_url_length nginx answers 414 with an HTML page; at the limit all is well."""
    ids = _ids(sandbox, 100)
    path = "/api/v1/conversation?id=" + _in(ids)
    sandbox.configure(max_url_length=len(path))
    assert sandbox_client.patch(path.removeprefix("/api/v1"), json={}).status_code == 204
    sandbox.configure(max_url_length=len(path) - 1)
    response = sandbox_client.patch(path.removeprefix("/api/v1"), json={})
    assert response.status_code == 414
    assert response.headers["content-type"].startswith("text/html")
    assert "414 Request-URI Too Large" in response.text


def test_configure_refuses_bad_values(sandbox: Sandbox) -> None:
    """configure() names the bad switch or value and keeps the old switches."""
    with pytest.raises(ValueError, match="fault_500"):
        sandbox.configure(fault_500=1.5)
    with pytest.raises(ValueError, match="unknown sandbox switch"):
        sandbox.configure(fault_five_hundred=1.0)
    assert sandbox.config == SandboxConfig()


def test_config_values_are_checked() -> None:
    """SandboxConfig refuses impossible values."""
    for bad in (
        {"rate": 0},
        {"object_response": "sometimes"},
        {"cutoff_status": 200},
        {"fault_500": 0.6, "fault_503": 0.6},
        {"token": ""},
    ):
        with pytest.raises(ValueError):
            SandboxConfig(**bad)  # type: ignore[arg-type]


def test_count_exact_totals_every_matching_row(
    sandbox: Sandbox, sandbox_client: httpx.Client
) -> None:
    """count=exact totals every row the filters match, however small the page or max_rows."""
    open_total = sum(row["status"] == "open" for row in sandbox.rows())
    assert 20 < open_total < 300
    sandbox.configure(max_rows=20)
    count = {"Prefer": "count=exact"}
    for params, headers, status, content_range, size in [
        ({}, count, 206, "0-19/300", 20),
        ({"limit": "500"}, count, 206, "0-19/300", 20),
        ({"status": "eq.open"}, count, 206, f"0-19/{open_total}", 20),
        ({"order": "id", "offset": "40", "limit": "10"}, count, 206, "40-49/300", 10),
        ({"order": "id", "offset": "290"}, count, 206, "290-299/300", 10),
        ({}, {}, 200, "0-19/*", 20),
    ]:
        response = sandbox_client.get(
            "/conversation", params={"select": "id", **params}, headers=headers
        )
        assert response.status_code == status, params
        assert response.headers["content-range"] == content_range
        assert len(response.json()) == size


def test_id_list_longer_than_max_rows(sandbox: Sandbox, sandbox_client: httpx.Client) -> None:
    """50 ids under max_rows=20: 20 of them, Content-Range 0-19/50 with count=exact, else 0-19/*."""
    ids = _ids(sandbox, 50)
    sandbox.configure(max_rows=20)
    params = {"id": _in(ids), "select": "id"}
    counted = sandbox_client.get("/conversation", params=params, headers={"Prefer": "count=exact"})
    assert counted.status_code == 206 and counted.headers["content-range"] == "0-19/50"
    returned = [row["id"] for row in counted.json()]
    assert len(returned) == len(set(returned)) == 20 and set(returned) <= set(ids)
    plain = sandbox_client.get("/conversation", params=params)
    assert plain.status_code == 200 and plain.headers["content-range"] == "0-19/*"
    assert len(plain.json()) == 20


def test_dropped_prefer_or_content_range_loses_the_total(
    sandbox: Sandbox, sandbox_client: httpx.Client
) -> None:
    """drop_prefer: count=exact never arrives (0-19/*, 200); drop_content_range: no header."""
    sandbox.configure(max_rows=20, drop_prefer=True)
    count = {"Prefer": "count=exact"}
    response = sandbox_client.get("/conversation", params={"select": "id"}, headers=count)
    assert response.status_code == 200 and response.headers["content-range"] == "0-19/*"
    assert "preference-applied" not in response.headers and len(response.json()) == 20
    sandbox.configure(drop_prefer=False, drop_content_range=True)
    response = sandbox_client.get("/conversation", params={"select": "id"}, headers=count)
    assert response.status_code == 206 and "content-range" not in response.headers
    assert response.headers["preference-applied"] == "count=exact"
    assert len(response.json()) == 20


def test_default_status_open_is_unread_outside_columns(
    sandbox: Sandbox, sandbox_client: httpx.Client
) -> None:
    """default_status_open adds status to the body, which a ?columns= without status ignores."""
    sandbox.configure(default_status_open=True)
    row = next(row for row in sandbox.rows() if row["status"] == "closed")
    params = {"id": f"eq.{row['id']}"}
    sandbox_client.patch(
        "/conversation",
        params={**params, "columns": "inbox_id"},
        json={"inbox_id": row["inbox_id"]},
    )
    assert sandbox.row(row["id"])["status"] == "closed"  # type: ignore[index]
    sandbox_client.patch(
        "/conversation",
        params={**params, "columns": "inbox_id,status"},
        json={"inbox_id": row["inbox_id"]},
    )
    assert sandbox.row(row["id"])["status"] == "open"  # type: ignore[index]
