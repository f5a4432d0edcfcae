"""The validate stage: what each cell means, and whether a row can be sent.

Pure functions, no I/O. The cell semantics are a contract users rely on:

- an absent column, an empty or whitespace-only cell: leave that field unchanged (`UNSET`);
- the word `null` in any case: set JSON null, allowed for assignee_id only;
- uuids may carry surrounding spaces and upper case, and are sent in canonical lower case;
- status may be in any case, and is sent as one of open, closed, archived.

A row that breaks them becomes an `InvalidRow` whose reason lists every problem, joined by "; ".
Duplicates across rows are the pipeline's business, not this module's.

`validate_row` is the rule, one row at a time. `validate_batch` applies it to a batch of rows
in bulk, with the same answers: cells that repeat (target columns hold a few values over many
rows) are parsed once per batch, ids in the common form are checked by one columnar regex, and
only the rows these shortcuts cannot vouch for go through `validate_row` itself.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple

from pipeline.core import arrays
from pipeline.core.errors import InputError
from pipeline.core.models import (
    FIELDS,
    NULLABLE_FIELDS,
    STATUSES,
    FieldValues,
    InvalidRow,
    RowRequest,
)
from pipeline.stages.input.input_file import InputRow, RowBatch

if TYPE_CHECKING:
    import pyarrow

__all__ = [
    "CHECKED_COLUMNS",
    "JSON_NULL",
    "UNSET",
    "parse_cell",
    "parse_fixed_values",
    "validate_batch",
    "validate_row",
]

_UUID_FIELDS: Final = frozenset({"inbox_id", "assignee_id"})
#: The canonical uuid text, exactly what `pipeline.core.models.normalise_uuid` returns. Matching it
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

    if row.problem is not None:
        return InvalidRow(row.row, conversation_id, _with_cell_problem(row.problem, problems))
    if problems:
        return InvalidRow(row.row, conversation_id, "; ".join(problems))
    if not values:
        return InvalidRow(row.row, conversation_id, "nothing to change")
    # Built in FIELDS order from known fields, so FieldValues.of's checks are already satisfied.
    return RowRequest(
        row.row, conversation_id, FieldValues(tuple(values)), expected=FieldValues(tuple(expected))
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


# --- in bulk -------------------------------------------------------------------------------------

#: The columns of a checked batch (`validate_batch`): the row, its conversation id (normalised
#: when it is a uuid, else as written), why it is invalid (null: valid), then the target and the
#: expected value of each field: null leaves it unchanged, JSON_NULL sets JSON null, else the
#: normalised value. Targets and expected values are null on invalid rows.
CHECKED_COLUMNS: Final = (
    "row",
    "conversation_id",
    "reason",
    *FIELDS,
    *(f"expect_{field}" for field in FIELDS),
)
#: JSON null in a checked batch's value columns: no uuid or status can be spelled so.
JSON_NULL: Final = "null"
#: An id cell `validate_batch` accepts without asking `validate_row`: a uuid in any case with
#: plain spaces around it, which `validate_row` accepts too (as its lower-case, stripped form).
#: Any other cell, a uuid padded with tabs say, is judged by `validate_row`.
_PLAIN_UUID: Final = (
    r"^ *[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12} *$"
)
_NOTHING_TO_CHANGE: Final = "nothing to change"


@functools.cache
def checked_schema() -> pyarrow.Schema:
    import pyarrow as pa

    return pa.schema(
        [(name, pa.int64() if name == "row" else pa.string()) for name in CHECKED_COLUMNS]
    )


def validate_batch(batch: RowBatch, fixed: Mapping[str, str | None]) -> pyarrow.RecordBatch:
    """Check a batch of rows at once: a record batch of CHECKED_COLUMNS, one row per input row,
    holding what `validate_row` would answer for each."""
    import pyarrow as pa
    import pyarrow.compute as pc

    size = len(batch)
    no_value = pa.nulls(size, pa.string())
    ids = batch.conversation_id
    conversation_id = pc.ascii_lower(pc.utf8_trim(ids, " "))
    needs_row_check = pc.invert(pc.match_substring_regex(ids, _PLAIN_UUID))
    targets: list[Any] = []
    for field, cells in zip(FIELDS, batch.cells, strict=True):
        if field in fixed:
            value = fixed[field]
            targets.append(pa.repeat(arrays.string(JSON_NULL if value is None else value), size))
            continue
        values, problems = _parse_column(field, cells)
        targets.append(values)
        if problems is not None:
            needs_row_check = pc.or_(needs_row_check, problems)
    has_expected = any(cells is not None for cells in batch.expected)
    expected: list[Any] = []
    for field, cells in zip(FIELDS, batch.expected, strict=True):
        values, problems = _parse_column(field, cells)
        expected.append(values)
        if problems is not None:
            needs_row_check = pc.or_(needs_row_check, problems)

    present = [pc.is_valid(values) for values in targets if values is not None]
    if present:
        changes_something = functools.reduce(pc.or_, present)
        nothing = pc.and_not(pc.invert(changes_something), needs_row_check)
    else:
        nothing = pc.invert(needs_row_check)
    invalid = pc.or_(needs_row_check, nothing)
    reason = pc.if_else(nothing, arrays.string(_NOTHING_TO_CHANGE), no_value)
    columns = [conversation_id, reason]
    for values in (*targets, *expected):
        columns.append(no_value if values is None else pc.if_else(invalid, no_value, values))

    checked = pc.indices_nonzero(needs_row_check)
    if len(checked):
        # The rows the shortcuts cannot vouch for, judged one by one by the rule itself.
        replacements = _check_rows(batch, checked, fixed, has_expected)
        columns = [
            # The value columns are null on these rows already: most of them stay invalid.
            column
            if position > 1 and all(value is None for value in values)
            else pc.replace_with_mask(column, needs_row_check, arrays.strings(values))
            for position, (column, values) in enumerate(zip(columns, replacements, strict=True))
        ]
    if batch.problems is not None:
        columns = _with_cell_problems(columns, batch.problems)
    return pa.RecordBatch.from_arrays([batch.rows, *columns], schema=checked_schema())


def _with_cell_problem(problem: str, own: Sequence[str]) -> str:
    """A row's reason: the reader's `problem` first, then the rule's own problems less those
    that only echo the cells the reader handed on empty."""
    echoes = {_NOTHING_TO_CHANGE}
    if any(part.startswith("conversation_id ") for part in problem.split("; ")):
        echoes.add("conversation_id is empty")
    return "; ".join([problem, *(part for part in own if part not in echoes)])


def _with_cell_problems(columns: list[Any], problems: pyarrow.Array) -> list[Any]:
    """The rows the reader found wrong by their cells' types (`RowBatch.problems`) made
    invalid, its reasons first. It handed those cells on empty, so an empty id (when it flagged
    the id) and "nothing to change" only echo what it set aside, and are left out."""
    import pyarrow as pa
    import pyarrow.compute as pc

    flagged = pc.is_valid(problems)
    at = pc.indices_nonzero(flagged)
    reasons = []
    for problem, own in zip(
        pc.take(problems, at).to_pylist(), pc.take(columns[1], at).to_pylist(), strict=True
    ):
        reasons.append(_with_cell_problem(problem, [] if own is None else own.split("; ")))
    no_value = pa.scalar(None, pa.string())
    return [
        columns[0],
        pc.replace_with_mask(columns[1], flagged, arrays.strings(reasons)),
        *(pc.if_else(flagged, no_value, column) for column in columns[2:]),
    ]


def _parse_column(
    field: str, cells: pyarrow.Array | None
) -> tuple[pyarrow.Array | None, pyarrow.Array | None]:
    """A column's cells parsed: the values (null: unchanged, JSON_NULL, or the normalised value)
    and which cells are wrong; None for a column of only unchanged cells, and for no problems."""
    import pyarrow.compute as pc

    if cells is None:
        return None, None
    # Each distinct cell is parsed once.
    encoded = pc.dictionary_encode(cells)
    parsed = [_parse_cell_cached(field, raw) for raw in encoded.dictionary.to_pylist()]
    values = [
        None
        if value is UNSET or isinstance(value, _Problem)
        else (JSON_NULL if value is None else value)
        for value in parsed
    ]
    wrong = [isinstance(value, _Problem) for value in parsed]
    indices = encoded.indices
    column = None
    if any(value is not None for value in values):
        column = pc.take(arrays.strings(values), indices)
    problems = pc.take(arrays.flags(wrong), indices) if any(wrong) else None
    return column, problems


def _check_rows(
    batch: RowBatch, indices: pyarrow.Array, fixed: Mapping[str, str | None], has_expected: bool
) -> list[list[str | None]]:
    """validate_row on the rows at `indices`: their values of every checked column but `row`."""
    import pyarrow.compute as pc

    def cells_of(column: pyarrow.Array | None) -> list[Any]:
        return [None] * len(indices) if column is None else pc.take(column, indices).to_pylist()

    rows = pc.take(batch.rows, indices).to_pylist()
    ids = pc.take(batch.conversation_id, indices).to_pylist()
    cells = [cells_of(column) for column in batch.cells]
    expected = [cells_of(column) for column in batch.expected]
    out: list[list[str | None]] = [[] for _ in range(2 + 2 * len(FIELDS))]
    for index, (row, conversation_id) in enumerate(zip(rows, ids, strict=True)):
        row_cells = (cells[0][index], cells[1][index], cells[2][index])
        if has_expected:
            row_expected = (expected[0][index], expected[1][index], expected[2][index])
            input_row = InputRow(row, conversation_id, row_cells, row_expected)
        else:
            input_row = InputRow(row, conversation_id, row_cells)
        result = validate_row(input_row, fixed)
        out[0].append(result.conversation_id)
        if isinstance(result, InvalidRow):
            out[1].append(result.reason)
            for values in out[2:]:
                values.append(None)
            continue
        out[1].append(None)
        target = result.change.body()
        wanted = result.expected.body()
        for position, field in enumerate(FIELDS):
            out[2 + position].append(_encode(target, field))
            out[2 + len(FIELDS) + position].append(_encode(wanted, field))
    return out


def _encode(values: Mapping[str, str | None], field: str) -> str | None:
    if field not in values:
        return None
    value = values[field]
    return JSON_NULL if value is None else value


def decode_change(values: Sequence[str | None]) -> FieldValues:
    """The FieldValues a checked batch's FIELDS columns hold for one row."""
    return FieldValues(
        tuple(
            (field, None if value == JSON_NULL else value)
            for field, value in zip(FIELDS, values, strict=True)
            if value is not None
        )
    )
