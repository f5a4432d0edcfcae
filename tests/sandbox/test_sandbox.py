"""The sandbox's default answers: plain PostgREST behind a proxy with Mateo's error body."""

from __future__ import annotations

import json

import httpx
import pytest

from pipeline.sandbox import Sandbox, SandboxState, generate_dataset, load_seed
from pipeline.sandbox.data import SAMPLE_SIZE
from tests.helpers import SAMPLE

ERROR_KEYS = {"code", "message", "details", "hint", "status"}
UNKNOWN_UUID = "00000000-0000-4000-8000-00000000abcd"


def _ids(sandbox: Sandbox, n: int, **where: object) -> list[str]:
    rows = [row for row in sandbox.rows() if all(row[k] == v for k, v in where.items())]
    return [row["id"] for row in rows[:n]]


def _in(ids: list[str]) -> str:
    return "in.(" + ",".join(ids) + ")"


def _error(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == ERROR_KEYS
    assert body["code"] == code
    assert body["status"] == status
    return body


# --- data -------------------------------------------------------------------------------------


def test_sample_data_is_the_generated_dataset() -> None:
    """sample_data/ holds exactly what generate_dataset makes, so both can be regenerated."""
    loaded = load_seed(SAMPLE / "conversations.csv")
    generated = generate_dataset(SAMPLE_SIZE)
    assert list(loaded.rows) == list(generated.rows)
    assert loaded.inboxes == generated.inboxes and loaded.agents == generated.agents


def test_sample_data_shape() -> None:
    """The sample has ~300 rows over 5 inboxes (one empty) and 8 agents, some unassigned."""
    dataset = load_seed(SAMPLE / "conversations.csv")
    used_inboxes = {row["inbox_id"] for row in dataset.rows}
    assert len(dataset.rows) == 300 and len(dataset.inboxes) == 5 and len(dataset.agents) == 8
    assert len(dataset.inbox_ids - used_inboxes) == 1
    assert any(row["assignee_id"] is None for row in dataset.rows)
    assert {row["status"] for row in dataset.rows} == {"open", "closed", "archived"}
    assert all(row["id"] == row["id"].lower() for row in dataset.rows)


def test_generated_rows_are_deterministic() -> None:
    """The same seed gives the same rows, a different seed different ones."""
    assert generate_dataset(20, 7) == generate_dataset(20, 7)
    assert generate_dataset(20, 7).rows != generate_dataset(20, 8).rows


# --- auth -------------------------------------------------------------------------------------


def test_missing_token_is_401(sandbox: Sandbox) -> None:
    """No Authorization header: 401 with the documented error body."""
    response = httpx.get(sandbox.base_url + "/conversation")
    _error(response, 401, "UNAUTHORIZED")


def test_wrong_token_is_403(sandbox: Sandbox) -> None:
    """A wrong key is 403, a non-Bearer header 401."""
    url = sandbox.base_url + "/conversation"
    _error(httpx.get(url, headers={"Authorization": "Bearer nope"}), 403, "FORBIDDEN")
    _error(httpx.get(url, headers={"Authorization": f"Basic {sandbox.token}"}), 401, "UNAUTHORIZED")


# --- PATCH ------------------------------------------------------------------------------------


def test_patch_default_is_204_with_content_range(
    sandbox: Sandbox, sandbox_client: httpx.Client
) -> None:
    """Without Prefer: 204, no body, Content-Range counts the rows; updated_at moves."""
    ids = _ids(sandbox, 3, status="open")
    before = {row_id: sandbox.row(row_id) for row_id in ids}
    response = sandbox_client.patch(
        "/conversation", params={"id": _in(ids)}, json={"status": "closed"}
    )
    assert response.status_code == 204 and response.content == b""
    assert response.headers["content-range"] == "0-2/*"
    assert "content-type" not in response.headers
    for row_id in ids:
        after = sandbox.row(row_id)
        assert after is not None and after["status"] == "closed"
        assert after["updated_at"] > before[row_id]["updated_at"]  # type: ignore[index]


def test_patch_representation_is_array_shaped_by_select(
    sandbox: Sandbox, sandbox_client: httpx.Client
) -> None:
    """return=representation: 200 and a JSON array of the updated rows with the selected keys."""
    ids = _ids(sandbox, 2)
    agent = next(iter(sandbox.state.agent_ids))
    response = sandbox_client.patch(
        "/conversation",
        params={"id": _in(ids), "select": "id,assignee_id,status"},
        json={"assignee_id": agent, "status": "archived"},
        headers={"Prefer": "return=representation"},
    )
    assert response.status_code == 200
    assert response.headers["preference-applied"] == "return=representation"
    assert response.json() == [
        {"id": row_id, "assignee_id": agent, "status": "archived"} for row_id in sorted(ids)
    ]


def test_patch_zero_rows_is_not_an_error(sandbox_client: httpx.Client) -> None:
    """Nothing matched: 204 with Content-Range */*, or 200 [] with return=representation."""
    params = {"id": f"eq.{UNKNOWN_UUID}"}
    minimal = sandbox_client.patch("/conversation", params=params, json={"status": "closed"})
    assert minimal.status_code == 204 and minimal.headers["content-range"] == "*/*"
    full = sandbox_client.patch(
        "/conversation",
        params=params,
        json={"status": "closed"},
        headers={"Prefer": "return=representation"},
    )
    assert full.status_code == 200 and full.json() == []


def test_patch_filters_are_anded(sandbox: Sandbox, sandbox_client: httpx.Client) -> None:
    """A guard filter next to id=in. narrows the rows: only the open ones change."""
    open_ids = _ids(sandbox, 2, status="open")
    closed_ids = _ids(sandbox, 2, status="closed")
    response = sandbox_client.patch(
        "/conversation",
        params={"id": _in(open_ids + closed_ids), "status": "eq.open", "select": "id"},
        json={"status": "archived"},
        headers={"Prefer": "return=representation"},
    )
    assert sorted(row["id"] for row in response.json()) == sorted(open_ids)
    assert all(sandbox.row(row_id)["status"] == "closed" for row_id in closed_ids)  # type: ignore[index]


def test_in_list_accepts_quoted_items(sandbox: Sandbox, sandbox_client: httpx.Client) -> None:
    """in.("a","b") with double-quoted uuids works like the bare form."""
    ids = _ids(sandbox, 2)
    quoted = "in.(" + ",".join(f'"{row_id}"' for row_id in ids) + ")"
    response = sandbox_client.patch(
        "/conversation", params={"id": quoted}, json={"status": "archived"}
    )
    assert response.headers["content-range"] == "0-1/*"


def test_patch_sets_assignee_null(sandbox: Sandbox, sandbox_client: httpx.Client) -> None:
    """{"assignee_id": null} unassigns; the other columns stay as they were."""
    row = next(row for row in sandbox.rows() if row["assignee_id"] is not None)
    sandbox_client.patch(
        "/conversation", params={"id": f"eq.{row['id']}"}, json={"assignee_id": None}
    )
    after = sandbox.row(row["id"])
    assert after is not None and after["assignee_id"] is None
    assert {k: v for k, v in after.items() if k not in ("assignee_id", "updated_at")} == {
        k: v for k, v in row.items() if k not in ("assignee_id", "updated_at")
    }


def test_empty_object_changes_nothing(sandbox: Sandbox, sandbox_client: httpx.Client) -> None:
    """A body of {} updates no row: 204 with */* and updated_at unchanged."""
    row_id = _ids(sandbox, 1)[0]
    before = sandbox.row(row_id)
    response = sandbox_client.patch("/conversation", params={"id": f"eq.{row_id}"}, json={})
    assert response.status_code == 204 and response.headers["content-range"] == "*/*"
    assert sandbox.row(row_id) == before


def test_updated_at_moves_on_every_update(sandbox: Sandbox, sandbox_client: httpx.Client) -> None:
    """Setting the same value twice still counts as two updates with two timestamps."""
    row_id = _ids(sandbox, 1)[0]
    stamps = []
    for _ in range(3):
        sandbox_client.patch(
            "/conversation", params={"id": f"eq.{row_id}"}, json={"status": "closed"}
        )
        stamps.append(sandbox.row(row_id)["updated_at"])  # type: ignore[index]
    assert stamps == sorted(set(stamps))
    stats = sandbox.stats()
    assert stats["ids_updated_more_than_once"] == {row_id: 3} and stats["updates"] == 3


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b'{"subject": "x"}', 400, "PGRST204"),
        (b'{"status": "done"}', 400, "22P02"),
        (b'{"inbox_id": "not-a-uuid"}', 400, "22P02"),
        (b'{"assignee_id": 42}', 400, "22P02"),
        (b'{"inbox_id": null}', 400, "23502"),
        (b'{"status": null}', 400, "23502"),
        (b"not json", 400, "PGRST102"),
        (b"", 400, "PGRST102"),
        (b'[{"status": "open"}]', 400, "PGRST102"),
        (b'"closed"', 400, "PGRST102"),
        (b'{"inbox_id": "' + UNKNOWN_UUID.encode() + b'"}', 409, "23503"),
        (b'{"assignee_id": "' + UNKNOWN_UUID.encode() + b'"}', 409, "23503"),
    ],
)
def test_bad_bodies_are_refused_and_change_nothing(
    sandbox: Sandbox, sandbox_client: httpx.Client, body: bytes, status: int, code: str
) -> None:
    """Each bad body gets PostgREST's status and code, and no row changes."""
    row_id = _ids(sandbox, 1)[0]
    before = sandbox.rows()
    response = sandbox_client.patch(
        "/conversation",
        params={"id": f"eq.{row_id}"},
        content=body,
        headers={"Content-Type": "application/json"},
    )
    _error(response, status, code)
    assert sandbox.rows() == before


def test_unknown_foreign_key_is_fine_when_nothing_matches(sandbox_client: httpx.Client) -> None:
    """PostgreSQL checks a foreign key per updated row: no row, no 23503."""
    response = sandbox_client.patch(
        "/conversation", params={"id": f"eq.{UNKNOWN_UUID}"}, json={"inbox_id": UNKNOWN_UUID}
    )
    assert response.status_code == 204


def test_move_into_the_empty_inbox(sandbox: Sandbox, sandbox_client: httpx.Client) -> None:
    """The Archive inbox has no conversations yet is a valid target."""
    archive = next(i for i, name in sandbox.state.dataset.inboxes if name == "Archive")
    row_id = _ids(sandbox, 1)[0]
    response = sandbox_client.patch(
        "/conversation", params={"id": f"eq.{row_id}"}, json={"inbox_id": archive}
    )
    assert response.status_code == 204
    assert sandbox.row(row_id)["inbox_id"] == archive  # type: ignore[index]


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"id": "eq.{id}", "status": "open"}, 400, "PGRST100"),
        ({"id": "eq.{id}", "status": "bogus.open"}, 400, "PGRST100"),
        ({"id": "eq.{id}", "status": "in.(open"}, 400, "PGRST100"),
        ({"id": "eq.{id}", "status": "is.maybe"}, 400, "PGRST100"),
        ({"id": "eq.not-a-uuid"}, 400, "22P02"),
        ({"id": "in.({id},nope)"}, 400, "22P02"),
        ({"id": "eq.{id}", "color": "eq.red"}, 400, "42703"),
        ({"id": "eq.{id}", "select": "id,colour"}, 400, "42703"),
        ({"id": "eq.{id}", "status": "eq.done"}, 400, "22P02"),
        ({"id": "eq.{id}", "created_at": "lt.yesterday"}, 400, "22007"),
    ],
)
def test_bad_query_strings_are_refused(
    sandbox: Sandbox, sandbox_client: httpx.Client, params: dict[str, str], status: int, code: str
) -> None:
    """Malformed filters, bad literals and unknown columns get PostgREST's codes."""
    row_id = _ids(sandbox, 1)[0]
    filled = {key: value.replace("{id}", row_id) for key, value in params.items()}
    before = sandbox.rows()
    response = sandbox_client.patch("/conversation", params=filled, json={"status": "closed"})
    _error(response, status, code)
    assert sandbox.rows() == before


def test_uuid_literals_are_read_like_postgresql(
    sandbox: Sandbox, sandbox_client: httpx.Client
) -> None:
    """Upper case and braces are valid uuid input; the row is still found."""
    row_id = _ids(sandbox, 1)[0]
    response = sandbox_client.patch(
        "/conversation", params={"id": "eq.{" + row_id.upper() + "}"}, json={"status": "archived"}
    )
    assert response.headers["content-range"] == "0-0/*"


def test_patch_columns_applies_only_the_named_keys(
    sandbox: Sandbox, sandbox_client: httpx.Client
) -> None:
    """?columns=status sets status alone: the body's other keys, even unknown ones, are ignored."""
    row = next(row for row in sandbox.rows() if row["status"] == "open")
    other_inbox = next(inbox for inbox in sandbox.state.inbox_ids if inbox != row["inbox_id"])
    response = sandbox_client.patch(
        "/conversation",
        params={"id": f"eq.{row['id']}", "columns": "status"},
        json={"status": "closed", "inbox_id": other_inbox, "colour": "red"},
    )
    assert response.status_code == 204 and response.headers["content-range"] == "0-0/*"
    after = sandbox.row(row["id"])
    assert after is not None and after["status"] == "closed"
    assert after["inbox_id"] == row["inbox_id"]


@pytest.mark.parametrize(
    ("columns", "code", "message"),
    [
        (
            "status,colour",
            "PGRST204",
            "Could not find the 'colour' column of 'conversation' in the schema cache",
        ),
        (
            "subject",
            "PGRST204",
            "Could not find the 'subject' column of 'conversation' in the schema cache",
        ),
        ("", "PGRST100", None),
        ("status;inbox_id", "PGRST100", None),
    ],
)
def test_patch_columns_naming_no_column_is_refused(
    sandbox: Sandbox,
    sandbox_client: httpx.Client,
    columns: str,
    code: str,
    message: str | None,
) -> None:
    """A ?columns= name that is no writable column is 400 PGRST204, bad syntax PGRST100."""
    row_id = _ids(sandbox, 1)[0]
    before = sandbox.rows()
    response = sandbox_client.patch(
        "/conversation",
        params={"id": f"eq.{row_id}", "columns": columns},
        json={"status": "archived"},
    )
    body = _error(response, 400, code)
    if message is not None:
        assert body["message"] == message
    assert sandbox.rows() == before and sandbox.stats()["updates"] == 0


def test_patch_columns_fills_a_missing_key_with_null_or_its_default(
    sandbox: Sandbox, sandbox_client: httpx.Client
) -> None:
    """A ?columns= name the body lacks is set NULL, or its default with Prefer: missing=default."""
    row = next(row for row in sandbox.rows() if row["assignee_id"] and row["status"] == "closed")
    params = {"id": f"eq.{row['id']}"}
    cleared = sandbox_client.patch(
        "/conversation",
        params={**params, "columns": "status,assignee_id"},
        json={"status": "archived"},
    )
    assert cleared.status_code == 204
    after = sandbox.row(row["id"])
    assert after is not None and after["status"] == "archived" and after["assignee_id"] is None
    before = sandbox.rows()
    not_null = sandbox_client.patch(
        "/conversation", params={**params, "columns": "inbox_id"}, json={"status": "open"}
    )
    _error(not_null, 400, "23502")
    assert sandbox.rows() == before
    defaulted = sandbox_client.patch(
        "/conversation",
        params={**params, "columns": "status,inbox_id", "select": "id,status,inbox_id"},
        json={"inbox_id": row["inbox_id"]},
        headers={"Prefer": "missing=default, return=representation"},
    )
    assert defaulted.status_code == 200
    assert defaulted.headers["preference-applied"] == "missing=default, return=representation"
    assert defaulted.json() == [{"id": row["id"], "status": "open", "inbox_id": row["inbox_id"]}]


# --- safety ------------------------------------------------------------------------------------


@pytest.mark.safety_violations_expected
@pytest.mark.parametrize(
    "params",
    [
        {},
        {"status": "eq.open"},
        {"id": "not.in.()"},
        {"id": "not.is.null"},
        {"id": "is.not_null"},
        {"id": "in.()"},
        {"id": "neq.00000000-0000-4000-8000-000000000000"},
        {"or": "(id.eq.00000000-0000-4000-8000-000000000000,status.eq.open)"},
    ],
)
def test_patch_without_an_id_guard_is_a_safety_violation(
    sandbox: Sandbox, sandbox_client: httpx.Client, params: dict[str, str]
) -> None:
    """A PATCH that could reach every row is refused with 400 21000 and counted."""
    before = sandbox.rows()
    response = sandbox_client.patch("/conversation", params=params, json={"status": "closed"})
    _error(response, 400, "21000")
    assert sandbox.stats()["safety_violations"] == 1
    assert sandbox.rows() == before


def test_guarded_patches_are_not_violations(sandbox: Sandbox, sandbox_client: httpx.Client) -> None:
    """id=eq. and a non-empty id=in. pass the guard and leave the counter at zero."""
    ids = _ids(sandbox, 2)
    sandbox_client.patch("/conversation", params={"id": f"eq.{ids[0]}"}, json={})
    sandbox_client.patch("/conversation", params={"id": _in(ids)}, json={})
    assert sandbox.stats()["safety_violations"] == 0


# --- GET ---------------------------------------------------------------------------------------


def test_get_returns_at_most_50_rows(sandbox: Sandbox, sandbox_client: httpx.Client) -> None:
    """No limit, or a limit above 50, still gives 50 distinct rows; with order=id the first 50."""
    all_ids = [row["id"] for row in sandbox.rows()]
    for params in ({}, {"limit": "500"}, {"order": "id"}, {"order": "id", "limit": "500"}):
        response = sandbox_client.get("/conversation", params=params)
        ids = [row["id"] for row in response.json()]
        assert response.status_code == 200 and len(ids) == len(set(ids)) == 50
        assert set(ids) <= set(all_ids)
        if "order" in params:
            assert ids == all_ids[:50]
        assert response.headers["content-range"] == "0-49/*"


def test_get_keyset_pagination_visits_every_row_once(
    sandbox: Sandbox, sandbox_client: httpx.Client
) -> None:
    """id=gt.<last>&order=id walks the whole table in pages of 50."""
    seen: list[str] = []
    last = "00000000-0000-0000-0000-000000000000"
    while True:
        page = sandbox_client.get(
            "/conversation", params={"select": "id", "id": f"gt.{last}", "order": "id"}
        ).json()
        if not page:
            break
        seen.extend(row["id"] for row in page)
        last = page[-1]["id"]
    assert seen == [row["id"] for row in sandbox.rows()]


def test_get_limit_offset_and_range(sandbox: Sandbox, sandbox_client: httpx.Client) -> None:
    """limit/offset and the Range header pick the same slice of the ordered rows."""
    all_ids = [row["id"] for row in sandbox.rows()]
    by_params = sandbox_client.get(
        "/conversation", params={"select": "id", "order": "id", "limit": "5", "offset": "10"}
    )
    by_range = sandbox_client.get(
        "/conversation",
        params={"select": "id", "order": "id"},
        headers={"Range-Unit": "items", "Range": "10-14"},
    )
    for response in (by_params, by_range):
        assert [row["id"] for row in response.json()] == all_ids[10:15]
        assert response.headers["content-range"] == "10-14/*"


def test_get_count_exact_gives_206_and_total(sandbox_client: httpx.Client) -> None:
    """Prefer: count=exact reports the total and a partial page is 206."""
    response = sandbox_client.get(
        "/conversation", params={"limit": "10"}, headers={"Prefer": "count=exact"}
    )
    assert response.status_code == 206
    assert response.headers["content-range"] == "0-9/300"


def test_get_filters_and_order(sandbox: Sandbox, sandbox_client: httpx.Client) -> None:
    """is.null, not.eq., timestamps and order=...desc behave like PostgreSQL."""
    rows = sandbox.rows()
    unassigned = sandbox_client.get(
        "/conversation", params={"assignee_id": "is.null", "select": "id", "limit": "50"}
    )
    assert {r["id"] for r in unassigned.json()} == {
        r["id"] for r in rows if r["assignee_id"] is None
    } or len(unassigned.json()) == 50
    not_open = sandbox_client.get(
        "/conversation", params={"status": "not.eq.open", "select": "status"}
    ).json()
    assert not_open and all(r["status"] != "open" for r in not_open)
    cut = "2025-06-01T00:00:00Z"
    early = sandbox_client.get(
        "/conversation", params={"created_at": f"lt.{cut}", "select": "created_at"}
    ).json()
    assert early and all(r["created_at"] < "2025-06-01" for r in early)
    newest = sandbox_client.get(
        "/conversation", params={"order": "created_at.desc", "limit": "3", "select": "created_at"}
    ).json()
    assert [r["created_at"] for r in newest] == sorted(
        (r["created_at"] for r in rows), reverse=True
    )[:3]


def test_get_without_order_has_no_promised_order(
    sandbox: Sandbox, sandbox_client: httpx.Client
) -> None:
    """Without order= every row still comes once, but each read in an order of its own."""
    sandbox.configure(max_rows=300)
    all_ids = [row["id"] for row in sandbox.rows()]
    reads = [
        [row["id"] for row in sandbox_client.get("/conversation", params={"select": "id"}).json()]
        for _ in range(2)
    ]
    for ids in reads:
        assert sorted(ids) == all_ids and ids != all_ids
    assert reads[0] != reads[1]
    ordered = sandbox_client.get("/conversation", params={"select": "id", "order": "id.asc"})
    assert [row["id"] for row in ordered.json()] == all_ids


def test_offset_paging_without_order_skips_and_repeats_rows(
    sandbox: Sandbox, sandbox_client: httpx.Client
) -> None:
    """Offset pages without order= are each whole, but together miss rows; with order=id not."""
    all_ids = [row["id"] for row in sandbox.rows()]

    def walk(extra: dict[str, str]) -> list[str]:
        seen: list[str] = []
        for offset in range(0, 300, 50):
            response = sandbox_client.get(
                "/conversation",
                params={"select": "id", "limit": "50", "offset": str(offset), **extra},
                headers={"Prefer": "count=exact"},
            )
            page = [row["id"] for row in response.json()]
            assert len(page) == len(set(page)) == 50 and set(page) <= set(all_ids)
            assert response.headers["content-range"] == f"{offset}-{offset + 49}/300"
            seen += page
        return seen

    unordered = walk({})
    assert len(unordered) == 300 and set(unordered) != set(all_ids)
    assert walk({"order": "id"}) == all_ids


def test_unordered_reads_repeat_with_the_seed_and_leave_faults_alone(
    sandbox: Sandbox, sandbox_client: httpx.Client
) -> None:
    """The order of reads without order= follows fault_seed, and never shifts the fault draws."""

    def reads(seed: int, params: dict[str, str]) -> list[tuple[int, tuple[str, ...]]]:
        sandbox.reset()
        sandbox.configure(fault_seed=seed, fault_500=0.3)
        answers = []
        for _ in range(20):
            response = sandbox_client.get("/conversation", params={"select": "id", **params})
            ids = tuple(row["id"] for row in response.json()) if response.status_code == 200 else ()
            answers.append((response.status_code, ids))
        return answers

    first = reads(5, {"limit": "10"})
    assert first == reads(5, {"limit": "10"}) and first != reads(6, {"limit": "10"})
    ordered = reads(5, {"limit": "10", "order": "id"})
    assert [status for status, _ in ordered] == [status for status, _ in first]
    assert {500, 200} <= {status for status, _ in first}


def test_get_or_filter(sandbox: Sandbox, sandbox_client: httpx.Client) -> None:
    """or=(...) selects rows matching either branch."""
    ids = _ids(sandbox, 2)
    response = sandbox_client.get(
        "/conversation", params={"or": f"(id.eq.{ids[0]},id.eq.{ids[1]})", "select": "id"}
    )
    assert sorted(r["id"] for r in response.json()) == sorted(ids)


def test_unknown_table_and_method(sandbox_client: httpx.Client) -> None:
    """Another table is 404 PGRST205; DELETE is 405."""
    _error(sandbox_client.get("/contact"), 404, "PGRST205")
    _error(sandbox_client.delete("/conversation"), 405, "PGRST117")


# --- introspection -------------------------------------------------------------------------------


def test_introspection_routes(sandbox: Sandbox) -> None:
    """/_sandbox/ shows rows and stats and changes switches, without a token."""
    with httpx.Client(base_url=sandbox.root_url) as client:
        rows = client.get("/_sandbox/rows").json()
        assert len(rows) == 300 and rows == sandbox.rows()
        changed = client.post("/_sandbox/config", json={"zero_match_404": True}).json()
        assert changed["zero_match_404"] is True and "token" not in changed
        assert sandbox.config.zero_match_404 is True
        refused = client.post("/_sandbox/config", json={"no_such_switch": 1})
        assert refused.status_code == 400 and "no_such_switch" in refused.json()["error"]
        httpx.get(sandbox.base_url + "/conversation")
        assert client.get("/_sandbox/stats").json()["requests_by_status"] == {"401": 1}
        assert client.post("/_sandbox/reset-stats").json() == {"ok": True}
        assert client.get("/_sandbox/stats").json()["requests"] == 0
        assert client.post("/_sandbox/advance-day").json() == {"ok": True}


def test_stats_count_by_method_and_status(sandbox: Sandbox, sandbox_client: httpx.Client) -> None:
    """Stats count requests by method and by status."""
    row_id = _ids(sandbox, 1)[0]
    sandbox_client.get("/conversation")
    sandbox_client.patch("/conversation", params={"id": f"eq.{row_id}"}, json={"status": "open"})
    sandbox_client.patch("/conversation", params={"id": f"eq.{row_id}"}, content=b"{")
    stats = sandbox.stats()
    assert stats["requests_by_method"] == {"GET": 1, "PATCH": 2}
    assert stats["requests_by_status"] == {"200": 1, "204": 1, "400": 1}
    assert stats["updates"] == 1 and stats["ids_updated"] == 1


def test_state_accepts_plain_rows() -> None:
    """SandboxState takes hand-written rows and fills in the missing columns."""
    state = SandboxState([{"id": UNKNOWN_UUID.upper(), "status": "closed"}])
    (row,) = state.rows()
    assert row["id"] == UNKNOWN_UUID and row["status"] == "closed" and row["assignee_id"] is None
    assert json.dumps(row)
