"""The group stage: rows whose change (and guard) is identical travel together in one request.

Mateo allows 10,000 requests a day, so ten thousand rows moving to one inbox should cost two
hundred PATCHes (`id=in.(…)` with 50 ids each), not ten thousand. A group is cut when it is
full; a partial group goes out when a worker is idle and no row arrives for a short while, when
too many rows are buffered, or when the input ends, so grouping never holds rows back for long.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream

from pipeline.core.models import NO_GUARD, ConversationIds, FieldValues, Guard, RowRequest


@dataclass(frozen=True)
class Group:
    """The rows one request covers: all share one change."""

    change: FieldValues
    rows: tuple[RowRequest, ...]
    guard: Guard = NO_GUARD

    def __post_init__(self) -> None:
        # The PATCH carries the group's change and guard, not each row's: a row of another
        # would go out with the wrong values, or without the filters that guard it.
        for row in self.rows:
            if row.change != self.change:
                raise ValueError(f"row {row.row} asks for another change than its group")
            if row.guard != self.guard:
                raise ValueError(f"row {row.row} has another guard than its group")

    @functools.cached_property
    def ids(self) -> ConversationIds:
        return ConversationIds(row.conversation_id for row in self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def split(self, size: int) -> list[Group]:
        return [
            Group(self.change, self.rows[start : start + size], self.guard)
            for start in range(0, len(self.rows), size)
        ]


class Grouper:
    """Hands workers the next group to send, pulling validated rows from the read stage.

    `fill_wait` is the longest a row waits for its group to fill before the group goes out
    part-full (a run's --max-group-wait, or longer at a low rate).
    """

    def __init__(
        self,
        rows: MemoryObjectReceiveStream[list[RowRequest]],
        *,
        batch_size: int,
        fill_wait: float = 0.5,
        max_buffered: int | None = None,
    ) -> None:
        self._rows = rows
        self.batch_size = batch_size
        self._fill_wait = fill_wait
        self._max_buffered = max_buffered or max(1_000, 20 * batch_size)
        self._pending: dict[tuple[FieldValues, Guard], list[RowRequest]] = {}
        #: When each pending group got its first row.
        self._since: dict[tuple[FieldValues, Guard], float] = {}
        self._ready: deque[Group] = deque()
        self._buffered = 0
        self._exhausted = False
        self._lock = anyio.Lock()

    async def next_group(self) -> Group | None:
        """The next group to send, or None once every row has been handed out."""
        async with self._lock:
            while True:
                if self._ready:
                    return self._take(self._ready.popleft())
                if self._exhausted or self._buffered >= self._max_buffered:
                    return self._take_oldest()
                if not self._pending:
                    await self._receive()
                    continue
                # No row waits longer than fill_wait for its group to fill: the deadline is the
                # oldest partial group's, not this call's, so rows that trickle in slowly over
                # many different changes never keep a worker idle.
                oldest = self._since[next(iter(self._pending))]
                timeout = oldest + self._fill_wait - anyio.current_time()
                if timeout <= 0:
                    return self._take_oldest()
                with anyio.move_on_after(timeout):
                    await self._receive()

    async def drain(self, handle: Callable[[list[RowRequest]], Awaitable[None]]) -> None:
        """Hand every row not yet sent to `handle`, buffered or still to come (the run stopped)."""
        buffered = [row for group in self._ready for row in group.rows]
        buffered += [row for pending in self._pending.values() for row in pending]
        self._ready.clear()
        self._pending.clear()
        self._since.clear()
        self._buffered = 0
        if buffered:
            await handle(buffered)
        while not self._exhausted:
            try:
                await handle(await self._rows.receive())
            except anyio.EndOfStream:
                self._exhausted = True
                self._rows.close()

    async def _receive(self) -> None:
        try:
            chunk = await self._rows.receive()
        except anyio.EndOfStream:
            self._exhausted = True
            self._rows.close()
            return
        for row in chunk:
            key = (row.change, row.guard)
            pending = self._pending.get(key)
            if pending is None:
                pending = self._pending[key] = []
                self._since[key] = anyio.current_time()
            pending.append(row)
            self._buffered += 1
            if len(pending) >= self.batch_size:
                del self._pending[key], self._since[key]
                self._ready.append(Group(row.change, tuple(pending), row.guard))

    def _take(self, group: Group) -> Group:
        self._buffered -= len(group)
        return group

    def _take_oldest(self) -> Group | None:
        if not self._pending:
            return None
        key = next(iter(self._pending))
        rows = self._pending.pop(key)
        del self._since[key]
        change, guard = key
        # The batch size may have been lowered (a 414) since these rows were buffered.
        group, *rest = Group(change, tuple(rows), guard).split(self.batch_size)
        self._ready.extend(rest)
        return self._take(group)
