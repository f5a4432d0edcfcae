"""The group stage: every row handed out once, groups share one change, few requests."""

from __future__ import annotations

import math
import uuid

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from trio.testing import MockClock

from pipeline.core.models import FieldValues, Guard, RowRequest
from pipeline.stages.grouping import Group, Grouper

CHANGES = [FieldValues.of({"status": status}) for status in ("open", "closed", "archived")] + [
    FieldValues.of({"inbox_id": str(uuid.UUID(int=n))}) for n in range(1, 8)
]


def make_rows(change_indexes: list[int]) -> list[RowRequest]:
    return [
        RowRequest(row, str(uuid.UUID(int=10_000 + row)), CHANGES[index])
        for row, index in enumerate(change_indexes, start=1)
    ]


def collect_groups(
    rows: list[RowRequest], batch_size: int, chunk: int = 1000, workers: int = 3
) -> list[Group]:
    groups: list[Group] = []

    async def main() -> None:
        send, receive = anyio.create_memory_object_stream[list[RowRequest]](2)
        grouper = Grouper(receive, batch_size=batch_size, fill_wait=0.5)

        async def produce() -> None:
            async with send:
                for start in range(0, len(rows), chunk):
                    await send.send(rows[start : start + chunk])

        async def work() -> None:
            while (group := await grouper.next_group()) is not None:
                groups.append(group)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(produce)
            for _ in range(workers):
                tasks.start_soon(work)

    anyio.run(main, backend="trio", backend_options={"clock": MockClock(autojump_threshold=0)})
    return groups


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(0, len(CHANGES) - 1), max_size=400),
    st.integers(1, 60),
    st.integers(1, 120),
)
def test_every_row_is_handed_out_once_in_groups_of_one_change(
    change_indexes: list[int], batch_size: int, chunk: int
) -> None:
    """Whatever the input and sizes: each row exactly once, one change and ≤ batch_size a group."""
    rows = make_rows(change_indexes)
    groups = collect_groups(rows, batch_size, chunk)
    handed_out = [row.row for group in groups for row in group.rows]
    assert sorted(handed_out) == [row.row for row in rows]
    for group in groups:
        assert 1 <= len(group) <= batch_size
        assert {row.change for row in group.rows} == {group.change}


def test_ten_target_combinations_cost_about_one_request_per_full_group() -> None:
    """10,000 rows over 10 interleaved targets: at most one partial group per target."""
    rows = make_rows([n % 10 for n in range(10_000)])
    groups = collect_groups(rows, batch_size=50, chunk=5_000)
    assert len(groups) <= 10_000 / 50 + 10
    assert len(groups) / len(rows) <= 0.021


def test_a_lone_row_is_sent_after_the_short_wait_even_while_input_is_open() -> None:
    """A partial group does not wait for the input to end: it goes out after fill_wait."""
    sent_at: list[float] = []

    async def main() -> None:
        send, receive = anyio.create_memory_object_stream[list[RowRequest]](2)
        grouper = Grouper(receive, batch_size=50, fill_wait=0.5)
        async with send, receive, anyio.create_task_group() as tasks:

            async def work() -> None:
                group = await grouper.next_group()
                assert group is not None and len(group) == 1
                sent_at.append(anyio.current_time())

            tasks.start_soon(work)
            started = anyio.current_time()
            await send.send(make_rows([0]))
            await anyio.sleep(10)  # the input stays open, no more rows come
            sent_at[:] = [at - started for at in sent_at]

    anyio.run(main, backend="trio", backend_options={"clock": MockClock(autojump_threshold=0)})
    assert len(sent_at) == 1 and math.isclose(sent_at[0], 0.5)


def test_split_keeps_order_and_change() -> None:
    """Group.split cuts a group into parts of at most `size` rows, in order."""
    group = Group(CHANGES[0], tuple(make_rows([0] * 7)))
    parts = group.split(3)
    assert [len(part) for part in parts] == [3, 3, 1]
    assert [row for part in parts for row in part.rows] == list(group.rows)


def test_rows_trickling_in_never_wait_longer_than_fill_wait() -> None:
    """Rows of many changes arriving one by one: each goes out fill_wait after it arrived."""
    sent: list[tuple[int, float]] = []

    async def main() -> None:
        send, receive = anyio.create_memory_object_stream[list[RowRequest]](100)
        grouper = Grouper(receive, batch_size=50, fill_wait=0.5)
        rows = make_rows(list(range(len(CHANGES))))
        async with send, receive, anyio.create_task_group() as tasks:

            async def trickle() -> None:
                for row in rows:
                    await send.send([row])
                    await anyio.sleep(0.1)

            tasks.start_soon(trickle)
            started = anyio.current_time()
            for _ in range(3):
                group = await grouper.next_group()
                assert group is not None
                sent.append((group.rows[0].row, anyio.current_time() - started))
            tasks.cancel_scope.cancel()

    anyio.run(main, backend="trio", backend_options={"clock": MockClock(autojump_threshold=0)})
    assert [row for row, _ in sent] == [1, 2, 3]
    assert [round(at, 3) for _, at in sent] == [0.5, 0.6, 0.7]


def test_a_group_holds_only_rows_of_its_change_and_guard() -> None:
    """A group's PATCH carries the group's change and guard, not each row's: a row asking for
    another change or guarded by other values cannot be put in it (it would go out wrong, or
    unguarded)."""
    row_id = "6f1c2a1e-4b7d-4c1e-9a8b-0d2e3f4a5b6c"
    closed = FieldValues.of({"status": "closed"})
    guard = Guard.matching({"status": "open"})
    Group(closed, (RowRequest(1, row_id, closed, guard=guard),), guard)  # as the Grouper makes it
    with pytest.raises(ValueError, match="guard"):
        Group(closed, (RowRequest(1, row_id, closed, guard=guard),))
    with pytest.raises(ValueError, match="change"):
        Group(closed, (RowRequest(1, row_id, FieldValues.of({"status": "open"})),))
