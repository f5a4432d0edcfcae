"""Property tests: the sandbox's row selection against a plain Python model of PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.sandbox import Sandbox, generate_dataset, running_sandbox
from pipeline.sandbox.errors import ApiError
from pipeline.sandbox.schema import STATUSES, parse_uuid

DATASET = generate_dataset(40, seed=5)
IDS = sorted(row["id"] for row in DATASET.rows)


@pytest.fixture(scope="module")
def small_sandbox() -> Iterator[Sandbox]:
    with running_sandbox(rows=DATASET.rows) as server:
        yield server


@pytest.mark.long
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    chosen=st.lists(st.sampled_from(IDS), min_size=1, max_size=10, unique=True),
    strangers=st.lists(st.uuids(version=4).map(str), max_size=3),
    guard=st.sampled_from([None, *STATUSES]),
    negate=st.booleans(),
    target=st.sampled_from(STATUSES),
)
def test_patch_changes_exactly_the_rows_the_filters_match(
    small_sandbox: Sandbox,
    chosen: list[str],
    strangers: list[str],
    guard: str | None,
    negate: bool,
    target: str,
) -> None:
    """id=in.(…) plus an optional (negated) status guard updates exactly the model's rows."""
    small_sandbox.reset()
    before = {row["id"]: row for row in small_sandbox.rows()}
    params = {"id": "in.(" + ",".join(f'"{i}"' for i in chosen + strangers) + ")", "select": "id"}
    if guard is not None:
        params["status"] = ("not.eq." if negate else "eq.") + guard
    with httpx.Client(
        base_url=small_sandbox.base_url, headers={"Authorization": f"Bearer {small_sandbox.token}"}
    ) as client:
        response = client.patch(
            "/conversation",
            params=params,
            json={"status": target},
            headers={"Prefer": "return=representation"},
        )
    expected = sorted(
        row_id
        for row_id in chosen
        if guard is None or ((before[row_id]["status"] == guard) != negate)
    )
    assert response.status_code == 200
    assert [row["id"] for row in response.json()] == expected
    after = {row["id"]: row for row in small_sandbox.rows()}
    for row_id, row in after.items():
        if row_id in expected:
            assert row["status"] == target and row["updated_at"] > before[row_id]["updated_at"]
        else:
            assert row == before[row_id]


@given(st.uuids(), st.sampled_from(["plain", "upper", "braces", "bare", "grouped"]))
def test_uuid_spellings_postgresql_accepts(value: uuid.UUID, spelling: str) -> None:
    """Every spelling PostgreSQL accepts parses to the canonical lower-case form."""
    canonical = str(value)
    digits = value.hex
    text = {
        "plain": canonical,
        "upper": canonical.upper(),
        "braces": "{" + canonical + "}",
        "bare": digits,
        "grouped": "-".join(digits[i : i + 4] for i in range(0, 32, 4)),
    }[spelling]
    assert parse_uuid(text) == canonical


@given(st.text(max_size=40))
def test_non_uuids_are_22p02(text: str) -> None:
    """Anything that is not a uuid spelling is refused with 22P02."""
    try:
        uuid.UUID(text.strip("{}"))
        looks_like_uuid = True
    except ValueError:
        looks_like_uuid = False
    if looks_like_uuid:
        return
    with pytest.raises(ApiError) as refused:
        parse_uuid(text)
    assert refused.value.code == "22P02"
