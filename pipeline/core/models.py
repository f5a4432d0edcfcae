"""The small typed records passed between the pipeline's stages."""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

#: The conversation fields a row may change, in the order they are reported and sent.
FIELDS: tuple[str, ...] = ("inbox_id", "assignee_id", "status")
STATUSES: tuple[str, ...] = ("open", "closed", "archived")
#: The conversation table's columns, as the API's documentation lists them.
CONVERSATION_COLUMNS: tuple[str, ...] = (
    "id",
    "created_at",
    "updated_at",
    "organisation_id",
    "subject",
    "status",
    "assignee_id",
    "unread",
    "channel_id",
    "channel_type",
    "contact_id",
    "external_id",
    "tags",
    "is_spam",
    "inbox_id",
    "latest_message_id",
    "latest_inbound_message_id",
    "latest_message_created_at",
    "latest_inbound_message_created_at",
)
#: Fields that may be set to JSON null.
NULLABLE_FIELDS: frozenset[str] = frozenset({"assignee_id"})


class Outcome(enum.StrEnum):
    """What happened to one input row; a report column that other tools read."""

    UPDATED = "updated"
    NOT_FOUND = "not_found"
    REJECTED = "rejected"
    FAILED = "failed"
    INVALID = "invalid"
    SKIPPED = "skipped"
    #: The row no longer matched its guard (someone changed it): left alone.
    CONFLICT = "conflict"
    #: Already in its target state when read: not sent.
    UNCHANGED = "unchanged"
    #: --dry-run: valid and would be sent.
    PLANNED = "planned"


#: error_code of a row whose PATCH may have changed it although no answer confirmed it (a lost
#: answer, a stop before the read-back). Such a row is in the undo file, guarded by its target.
MAYBE_APPLIED = "maybe_applied"
#: error_code of a row that a 2xx PATCH without a guard should have changed, yet does not hold
#: its target when read back: mateo-bulk cannot tell what happened, and says so.
UNCONFIRMED = "unconfirmed"


def normalise_uuid(text: str) -> str:
    """Return the canonical lower-case form of a uuid, or raise ValueError.

    Accepts surrounding spaces and upper case, as spreadsheets produce them; refuses braces,
    urn: prefixes and hyphen-less forms, which the API would refuse too.
    """
    candidate = text.strip().lower()
    if len(candidate) != 36 or candidate.count("-") != 4:
        raise ValueError(f"not a uuid: {text!r}")
    canonical = str(uuid.UUID(candidate))
    if canonical != candidate:
        raise ValueError(f"not a uuid: {text!r}")
    return canonical


def same_value(value: str | None, other: str | None) -> bool:
    """Field values compared as the API stores them (uuids and enums are case-insensitive)."""
    if value is None or other is None:
        return value is other
    return value.strip().lower() == other.strip().lower()


@dataclass(frozen=True, slots=True)
class FieldValues:
    """Values of some of a conversation's FIELDS, in FIELDS order; None means JSON null.

    A row's change (the targets a PATCH sends), its expected values (expect_* columns) and its
    values before the change (the snapshot) are each one of these.
    """

    values: tuple[tuple[str, str | None], ...]

    @classmethod
    def of(cls, values: Mapping[str, str | None]) -> FieldValues:
        unknown = set(values) - set(FIELDS)
        if unknown:
            raise ValueError(f"unknown fields: {sorted(unknown)}")
        return cls(tuple((name, values[name]) for name in FIELDS if name in values))

    def body(self) -> dict[str, str | None]:
        return dict(self.values)

    def get(self, name: str, default: str | None = None) -> str | None:
        return dict(self.values).get(name, default)

    def __bool__(self) -> bool:
        return bool(self.values)


@dataclass(frozen=True, slots=True)
class ConversationIds:
    """The rows one request may touch: a non-empty tuple of validated, distinct uuids.

    Every PATCH filter is built from this type and nothing else, so no code path can send a
    PATCH without an id filter (which on the real API would change every conversation).
    """

    ids: tuple[str, ...]

    def __init__(self, ids: Iterable[str]) -> None:
        checked = tuple(dict.fromkeys(normalise_uuid(each) for each in ids))
        if not checked:
            raise ValueError("a request must name at least one conversation id")
        object.__setattr__(self, "ids", checked)

    def filter_value(self) -> str:
        """The PostgREST filter for the `id` query parameter."""
        if len(self.ids) == 1:
            return f"eq.{self.ids[0]}"
        # uuids hold only hex digits and hyphens, none of PostgREST's reserved characters,
        # so the items need no quoting.
        return "in.(" + ",".join(self.ids) + ")"

    def __len__(self) -> int:
        return len(self.ids)


#: A column, or one of PostgREST's logic keys (`or=(…)`, `not.and=(…)`).
_COLUMN = re.compile(r"[a-z_][a-z0-9_]*|not\.(?:or|and)")


@dataclass(frozen=True, slots=True)
class Guard:
    """PostgREST filters a PATCH carries on top of its id filter: "only if it is still so".

    A row that no longer matches (someone changed it) is left alone and reported `conflict`.
    Guards narrow a request; they can never widen it, since the id filter is always there.
    """

    filters: tuple[tuple[str, str], ...] = ()

    @classmethod
    def of(cls, filters: Mapping[str, str]) -> Guard:
        """From {column: "op.value"}, e.g. {"status": "eq.open"}."""
        for column in filters:
            if not _COLUMN.fullmatch(column) or column == "id":
                raise ValueError(f"a guard cannot filter on {column!r}")
        return cls(tuple(sorted(filters.items())))

    @classmethod
    def matching(cls, values: Mapping[str, str | None]) -> Guard:
        """The row's fields must still hold `values` (None: still null)."""
        return cls.of(
            {name: "is.null" if value is None else f"eq.{value}" for name, value in values.items()}
        )

    def __add__(self, other: Guard) -> Guard:
        # Both sets of filters, even on one column: PostgREST ANDs repeated parameters, so a
        # run-wide guard never replaces a row's own guard on the same column.
        return Guard(tuple(sorted(set(self.filters) | set(other.filters))))

    def __bool__(self) -> bool:
        return bool(self.filters)


NO_GUARD = Guard()


@dataclass(frozen=True, slots=True)
class RowRequest:
    """A valid input row: one conversation and the change asked for it."""

    row: int
    conversation_id: str
    change: FieldValues
    #: Extra filters the row's PATCH carries (the values it had when planned).
    guard: Guard = NO_GUARD
    #: Values the row must still hold to be changed (an input's expect_* columns: an undo
    #: file expects the values the run set, so it never overwrites a later change).
    expected: FieldValues = FieldValues(())
    #: The row's values as read before the change (the snapshot: every field in FIELDS), or
    #: as an earlier session's write-ahead intent recorded them.
    before: FieldValues | None = None
    #: An earlier session sent this row's PATCH and never journaled its result: it may have
    #: been applied, so a row found at its target is this run's doing (`updated`).
    maybe_applied: bool = False


@dataclass(frozen=True, slots=True)
class InvalidRow:
    """An input row that will not be sent, and why."""

    row: int
    conversation_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class RowResult:
    """The final word on one input row; one line of the report."""

    row: int
    conversation_id: str
    outcome: Outcome
    change: FieldValues = field(default_factory=lambda: FieldValues(()))
    http_status: int | None = None
    attempts: int = 0
    error_code: str | None = None
    error_message: str | None = None
    #: The values the server returned for the row's fields (updated rows only).
    returned: Mapping[str, str | None] | None = None
    #: Fields whose returned value differs from the target, e.g. "status: closed -> open".
    difference: str | None = None
    #: The values of the changed fields before the run changed them (for undo).
    before: Mapping[str, str | None] | None = None
