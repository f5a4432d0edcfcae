"""The validate stage: what each cell means, and whether a row can be sent.

Pure functions, no I/O. The cell semantics are a contract users rely on:

- an absent column, an empty or whitespace-only cell: leave that field unchanged (`UNSET`);
- the word `null` in any case: set JSON null, allowed for assignee_id only;
- uuids may carry surrounding spaces and upper case, and are sent in canonical lower case;
- status may be in any case, and is sent as one of open, closed, archived.

A row that breaks them becomes an `InvalidRow` whose reason lists every problem, joined by "; ".
Duplicates across rows are the pipeline's business, not this module's.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Mapping, Sequence
from typing import Final, Literal, NamedTuple

from pipeline.errors import InputError
from pipeline.models import FIELDS, NULLABLE_FIELDS, STATUSES, Change, InvalidRow, RowRequest
from pipeline.reader import InputRow

__all__ = ["UNSET", "parse_cell", "parse_fixed_values", "validate_row"]

_UUID_FIELDS: Final = frozenset({"inbox_id", "assignee_id"})
#: The canonical uuid text, exactly what `pipeline.models.normalise_uuid` returns. Matching it
#: directly costs a fraction of building a `uuid.UUID`, which adds up at a million rows; the
#: property tests hold the two to the same answers.
_CANONICAL_UUID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_SHOWN_CHARS: Final = 40


class _Unset(enum.Enum):
    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


#: "Leave this field unchanged": what an empty cell or an absent column means.
UNSET: Final = _Unset.UNSET
Unset = Literal[_Unset.UNSET]


def parse_cell(field: str, raw: str | None) -> str | None | Unset:
    """The value a cell asks for: a normalised string, None for JSON null, or UNSET.

    Raises ValueError with a reason a user understands (it becomes the report's message).
    """
    if raw is None:
        return UNSET
    text = raw.strip()
    if not text:
        return UNSET
    lowered = text.lower()
    if lowered == "null":
        if field in NULLABLE_FIELDS:
            return None
        raise ValueError(f"{field}: null is allowed for assignee_id only")
    if field in _UUID_FIELDS:
        if _CANONICAL_UUID.fullmatch(lowered):
            return lowered
        raise ValueError(f"{field} is not a uuid: {_show(raw)}")
    if field == "status":
        if lowered in STATUSES:
            return lowered
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, not {_show(raw)}")
    raise ValueError(f"unknown field {field!r}; fields are {', '.join(FIELDS)}")


def parse_fixed_values(assignments: Sequence[str]) -> dict[str, str | None]:
    """Parse `--set FIELD=VALUE` flags into field -> value (None for JSON null)."""
    fixed: dict[str, str | None] = {}
    for assignment in assignments:
        field, separator, raw = assignment.partition("=")
        field = field.strip().lower()
        if not separator:
            raise InputError(f"--set {assignment}: expected FIELD=VALUE, e.g. --set status=closed")
        if field not in FIELDS:
            raise InputError(
                f"--set {assignment}: unknown field {field!r}; fields are {', '.join(FIELDS)}"
            )
        try:
            value = parse_cell(field, raw)
        except ValueError as error:
            raise InputError(f"--set {assignment}: {error}") from None
        if value is UNSET:
            raise InputError(
                f"--set {assignment}: empty value; give a value (or null for assignee_id)"
            )
        if field in fixed and fixed[field] != value:
            raise InputError(f"--set {assignment}: {field} is already set to {fixed[field]!r}")
        fixed[field] = value
    return fixed


def validate_row(row: InputRow, fixed: Mapping[str, str | None]) -> RowRequest | InvalidRow:
    """Check one row: a RowRequest to send, or an InvalidRow listing every problem.

    Values in `fixed` (from --set, already parsed) replace the file's cells for their field.
    """
    problems: list[str] = []
    raw_id = row.conversation_id
    conversation_id = raw_id.strip().lower()
    if not conversation_id:
        problems.append("conversation_id is empty")
    elif not _CANONICAL_UUID.fullmatch(conversation_id):
        problems.append(f"conversation_id is not a uuid: {_show(raw_id)}")
        conversation_id = raw_id

    values: list[tuple[str, str | None]] = []
    for field, raw in zip(FIELDS, row.cells, strict=True):
        if field in fixed:
            values.append((field, fixed[field]))
            continue
        value = _parse_cell_cached(field, raw)
        if isinstance(value, _Problem):
            problems.append(value.reason)
        elif value is not UNSET:
            values.append((field, value))

    expected: list[tuple[str, str | None]] = []
    if row.expected != _NO_EXPECTED:
        for field, raw in zip(FIELDS, row.expected, strict=True):
            value = _parse_cell_cached(field, raw)
            if isinstance(value, _Problem):
                problems.append(f"expect_{value.reason}")
            elif value is not UNSET:
                expected.append((field, value))

    if problems:
        return InvalidRow(row.row, conversation_id, "; ".join(problems))
    if not values:
        return InvalidRow(row.row, conversation_id, "nothing to change")
    # Built in FIELDS order from known fields, so Change.of's checks are already satisfied.
    return RowRequest(
        row.row, conversation_id, Change(tuple(values)), expected=Change(tuple(expected))
    )


_NO_EXPECTED = (None, None, None)


class _Problem(NamedTuple):
    reason: str


@functools.lru_cache(maxsize=4096)
def _parse_cell_cached(field: str, raw: str | None) -> str | None | Unset | _Problem:
    """parse_cell with its answers remembered: target columns repeat a few values over many rows
    (that is what makes grouping pay), so most cells become one dictionary look-up."""
    try:
        return parse_cell(field, raw)
    except ValueError as error:
        return _Problem(str(error))


def _show(raw: str) -> str:
    """A cell as quoted in a message, cut short: a 10,000-character cell must not flood a report."""
    if len(raw) <= _SHOWN_CHARS:
        return repr(raw)
    return repr(raw[:_SHOWN_CHARS]) + f"... ({len(raw):,} characters)"
