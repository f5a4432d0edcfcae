"""The prepare stage: validate every row of the file before anything is sent.

The input is read twice. This first pass counts rows, finds invalid ones and conversations listed
more than once, and keeps no rows in memory, so `--strict` can refuse a file and a conversation
listed twice with different targets is caught however far apart the rows are. The second pass
(`sort_chunk`) sorts each chunk into rows to report as invalid now and rows to send.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pipeline.models import InvalidRow, Outcome, RowRequest, RowResult
from pipeline.reader import InputFile, InputRow
from pipeline.validate import validate_row

_MASK_64 = (1 << 64) - 1
#: Distinct changes counted for the estimate; past this, a file is nearly "all different".
_TRACKED_CHANGES = 100_000
_MASK_32 = (1 << 32) - 1


@dataclass(frozen=True)
class Duplicates:
    """Conversations listed more than once."""

    #: uuid (as int) -> first row, for conversations listed with different targets.
    conflicting: dict[int, int]
    #: first row -> later rows asking the same: sent once, reported on each row.
    followers_of: dict[int, list[int]]
    follower_rows: frozenset[int]


@dataclass(frozen=True)
class Validation:
    """What the first pass found."""

    total_rows: int
    invalid_rows: int
    first_invalid: InvalidRow | None
    duplicates: Duplicates
    #: Valid rows per distinct change (by hash), for the request estimate.
    rows_per_change: tuple[int, ...] = ()
    #: Valid rows past the first _TRACKED_CHANGES distinct changes: one request each.
    untracked_rows: int = 0
    #: Conversations the run would send, each once: valid rows, less identical repeats and
    #: conversations listed with different targets (what --max-changes counts).
    conversations: int = 0

    def estimated_requests(self, batch_size: int) -> int:
        """PATCHes the run will cost if every group fills: rows with one change share them."""
        grouped = sum(-(-count // batch_size) for count in self.rows_per_change)
        return grouped + self.untracked_rows

    def estimated_reads(self) -> int:
        """GETs the snapshot costs: one per 50 valid rows (the API's page size)."""
        valid = sum(self.rows_per_change) + self.untracked_rows
        return -(-valid // 50)

    def problem(self) -> str | None:
        """Why --strict refuses this file, or None."""
        conflicts = len(self.duplicates.conflicting)
        if not self.invalid_rows and not conflicts:
            return None
        first = self.first_invalid
        detail = f" (first: row {first.row}: {first.reason})" if first else ""
        if conflicts:
            detail += f"; {conflicts} conversations are listed with different targets"
        return f"{self.invalid_rows} of {self.total_rows} rows are invalid{detail}"


def _id_key(conversation_id: str) -> int:
    return int(conversation_id.replace("-", ""), 16)


def validate_file(input_file: InputFile, fixed: Mapping[str, str | None]) -> Validation:
    """The first pass over the whole file."""
    # Per conversation: its first row, packed with a 64-bit hash of its change, in one int:
    # a million ids then cost ~120 MB, where a dict of records would cost several times that.
    # The hash is only compared between rows of one conversation, so a collision is moot.
    seen: dict[int, int] = {}
    conflicting: dict[int, int] = {}
    followers_of: dict[int, list[int]] = {}
    rows_per_change: dict[int, int] = {}
    total = invalid = untracked = 0
    first_invalid: InvalidRow | None = None
    for chunk in input_file.chunks():
        total += len(chunk)
        for input_row in chunk:
            checked = validate_row(input_row, fixed)
            if isinstance(checked, InvalidRow):
                invalid += 1
                first_invalid = first_invalid or checked
                continue
            key = _id_key(checked.conversation_id)
            change_hash = hash(checked.change) & _MASK_64
            if change_hash in rows_per_change:
                rows_per_change[change_hash] += 1
            elif len(rows_per_change) < _TRACKED_CHANGES:
                rows_per_change[change_hash] = 1
            else:
                untracked += 1
            packed = change_hash << 32 | checked.row
            previous = seen.setdefault(key, packed)
            if previous == packed:
                continue
            if previous >> 32 != packed >> 32:
                conflicting.setdefault(key, previous & _MASK_32)
            else:
                followers_of.setdefault(previous & _MASK_32, []).append(checked.row)
    for first_row in conflicting.values():
        # Rows of a conflicting conversation are all invalid: none is sent, none follows.
        followers_of.pop(first_row, None)
    follower_rows = frozenset(row for rows in followers_of.values() for row in rows)
    return Validation(
        total,
        invalid,
        first_invalid,
        Duplicates(conflicting, followers_of, follower_rows),
        tuple(rows_per_change.values()),
        untracked,
        len(seen) - len(conflicting),
    )


def sort_chunk(
    chunk: list[InputRow],
    fixed: Mapping[str, str | None],
    duplicates: Duplicates,
    done: set[int] | frozenset[int] = frozenset(),
) -> tuple[list[RowResult], list[RowRequest]]:
    """The second pass over one chunk: rows to report as invalid now, and rows to send.

    Rows in `done` (a resumed run's finished rows) and rows that repeat an earlier identical
    row are in neither list.
    """
    invalid: list[RowResult] = []
    to_send: list[RowRequest] = []
    for input_row in chunk:
        if input_row.row in done:
            continue
        checked = validate_row(input_row, fixed)
        if isinstance(checked, InvalidRow):
            invalid.append(
                RowResult(
                    checked.row,
                    checked.conversation_id,
                    Outcome.INVALID,
                    error_message=checked.reason,
                )
            )
            continue
        first = duplicates.conflicting.get(_id_key(checked.conversation_id))
        if first is not None:
            invalid.append(
                RowResult(
                    checked.row,
                    checked.conversation_id,
                    Outcome.INVALID,
                    change=checked.change,
                    error_message="the conversation is listed more than once with different "
                    f"targets (first in row {first}); give each conversation one target",
                )
            )
        elif checked.row not in duplicates.follower_rows:
            to_send.append(checked)
    return invalid, to_send
