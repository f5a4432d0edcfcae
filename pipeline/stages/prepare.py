"""The prepare stage: validate every row of the file before anything is sent.

One pass over the input (`validate_file`) checks every row, once, in batches (see
`pipeline.stages.validate.validate_batch`), and writes the checked batches to a spool: a temporary
Arrow file that the run then reads instead of the input, so no row is parsed or validated twice.
The pass counts rows, finds the invalid ones and the conversations listed more than once, and
keeps no rows in memory, so `--strict` can refuse a file and a conversation listed twice with
different targets is caught however far apart the rows are. The run then sorts each spooled
batch (`sort_batch`) into rows to report as invalid now and rows to send; a dry run turns each
batch into its report lines at once, in columns (`dry_run_columns`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from pipeline.core import arrays
from pipeline.core.models import FIELDS, FieldValues, InvalidRow, Outcome, RowRequest, RowResult
from pipeline.stages.input.input_file import InputFile
from pipeline.stages.spool import RowSpool, release_memory
from pipeline.stages.validate import decode_change, validate_batch

if TYPE_CHECKING:
    import pyarrow

#: Distinct changes counted for the estimate; past this, a file is nearly "all different".
_TRACKED_CHANGES = 100_000


def conflict_message(rows: tuple[int, ...], row: int) -> str:
    """Why `row` of a conversation listed in `rows` with different targets is invalid: the
    other rows named, so that the user finds its twin."""
    others = [each for each in rows if each != row]
    shown = ", ".join(map(str, others[:3])) + (
        f" and {len(others) - 3} more" if len(others) > 3 else ""
    )
    return (
        f"the conversation is also listed in row{'s' if len(others) > 1 else ''} {shown} with "
        "different targets; give each conversation one target"
    )


@dataclass(frozen=True)
class Duplicates:
    """Conversations listed more than once."""

    #: conversation id -> its rows, for conversations listed with different targets.
    conflicting: dict[str, tuple[int, ...]]
    #: first row -> later rows asking the same: sent once, reported on each row.
    followers_of: dict[int, list[int]]
    follower_rows: frozenset[int]

    def with_followers(self, results: list[RowResult]) -> list[RowResult]:
        """`results` and, for each, the same result on every later row asking the same."""
        return results + [
            replace(result, row=row)
            for result in results
            for row in self.followers_of.get(result.row, ())
        ]


@dataclass(frozen=True)
class Validation:
    """What the first pass found, and the checked rows it spooled."""

    total_rows: int
    invalid_rows: int
    first_invalid: InvalidRow | None
    duplicates: Duplicates
    #: Valid rows per distinct change, for the request estimate.
    rows_per_change: tuple[int, ...] = ()
    #: Valid rows past the first _TRACKED_CHANGES distinct changes: one request each.
    untracked_rows: int = 0
    #: Conversations the run would send, each once: valid rows, less identical repeats and
    #: conversations listed with different targets (what --max-changes counts).
    conversations: int = 0
    #: Every row as checked, in row order; None for a Validation made by hand.
    spool: RowSpool | None = field(default=None, compare=False, repr=False)
    #: How messages name a row: the input file's `describe_row` ("Sheet1, row 5").
    describe_row: Callable[[int], str] | None = field(default=None, compare=False, repr=False)

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
        where = self.describe_row or (lambda row: f"row {row}")
        detail = f" (first: {where(first.row)}: {first.reason})" if first else ""
        if conflicts:
            detail += f"; {conflicts} conversations are listed with different targets"
        return f"{self.invalid_rows} of {self.total_rows} rows are invalid{detail}"

    def close(self) -> None:
        """Remove the spool."""
        if self.spool is not None:
            self.spool.close()

    def __enter__(self) -> Validation:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def validate_file(input_file: InputFile, fixed: Mapping[str, str | None]) -> Validation:
    """The one pass over the whole file: every row checked once, and spooled.

    The spool is removed when the input file is closed (or the Validation).
    """
    import pyarrow.compute as pc

    spool = RowSpool()
    # The spool lives as long as the open input file it was read from.
    input_file.on_close(spool.close)
    try:
        rows_per_change: dict[tuple[str | None, ...], int] = {}
        total = invalid = untracked = 0
        first_invalid: InvalidRow | None = None
        for number, batch in enumerate(input_file.batches()):
            release_memory(number)
            checked = validate_batch(batch, fixed)
            reason = checked.column("reason")
            valid = pc.is_null(reason)
            spool.write(checked, valid)
            total += checked.num_rows
            bad = checked.num_rows - pc.sum(valid).as_py()
            invalid += bad
            if bad and first_invalid is None:
                at = pc.indices_nonzero(pc.is_valid(reason))[0].as_py()
                first_invalid = InvalidRow(
                    checked.column("row")[at].as_py(),
                    checked.column("conversation_id")[at].as_py(),
                    reason[at].as_py(),
                )
            if bad == checked.num_rows:
                continue
            # Valid rows per distinct change, counted in the order changes first appear.
            valid_rows = checked.filter(valid)
            codes, changes = _combinations([valid_rows.column(name) for name in FIELDS])
            for entry in pc.value_counts(codes).to_pylist():
                key, count = changes[entry["values"]], entry["counts"]
                if key in rows_per_change:
                    rows_per_change[key] += count
                elif len(rows_per_change) < _TRACKED_CHANGES:
                    rows_per_change[key] = count
                else:
                    untracked += count
        duplicates, distinct = _find_duplicates(spool)
        return Validation(
            total,
            invalid,
            first_invalid,
            duplicates,
            tuple(rows_per_change.values()),
            untracked,
            distinct - len(duplicates.conflicting),
            spool,
            input_file.describe_row,
        )
    except BaseException:
        spool.close()
        raise


def _combinations(
    columns: list[pyarrow.Array],
) -> tuple[pyarrow.Array, list[tuple[str | None, ...]]]:
    """Each row's combination of values across `columns` (nulls included), as an index into
    the list of the distinct combinations: computed on integers, so that what is done per
    combination (a JSON text, a count) is done once per batch and not once per row."""
    import pyarrow as pa
    import pyarrow.compute as pc

    code: pyarrow.Array | None = None
    values: list[list[str | None]] = []
    for column in columns:
        encoded = pc.dictionary_encode(column)
        distinct = [*encoded.dictionary.to_pylist(), None]
        # A null's index is the last one, the None added above.
        indices = pc.fill_null(
            pc.cast(encoded.indices, pa.int64()), arrays.integer(len(distinct) - 1)
        )
        if code is not None:
            indices = pc.add(pc.multiply(code, arrays.integer(len(distinct))), indices)
        code = indices
        values.append(distinct)
    assert code is not None
    encoded = pc.dictionary_encode(code)
    combinations = []
    for number in encoded.dictionary.to_pylist():
        combination: list[str | None] = []
        for distinct in reversed(values):
            number, index = divmod(number, len(distinct))
            combination.append(distinct[index])
        combinations.append(tuple(reversed(combination)))
    return encoded.indices, combinations


def _find_duplicates(spool: RowSpool) -> tuple[Duplicates, int]:
    """Conversations listed more than once, and the number of distinct valid conversations."""
    import pyarrow.compute as pc

    rows_of: dict[str, list[int]] = {}
    distinct = 0
    for part in spool.id_parts():
        if not part.num_rows:
            continue
        counts = pc.value_counts(part.column("conversation_id")).flatten()
        distinct += len(counts[0])
        repeated = pc.filter(counts[0], pc.greater(counts[1], arrays.integer(1)))
        if not len(repeated):
            continue
        listed = part.filter(pc.is_in(part.column("conversation_id"), value_set=repeated))
        for conversation_id, row in zip(
            listed.column("conversation_id").to_pylist(),
            listed.column("row").to_pylist(),
            strict=True,
        ):
            rows_of.setdefault(conversation_id, []).append(row)
    if not rows_of:
        return Duplicates({}, {}, frozenset()), distinct

    # The changes of the rows involved, read back from the spooled rows.
    wanted = arrays.integers(sorted(row for rows in rows_of.values() for row in rows))
    change_of: dict[int, tuple[str | None, ...]] = {}
    for checked in spool.batches():
        involved = checked.filter(pc.is_in(checked.column("row"), value_set=wanted))
        if involved.num_rows:
            rows = involved.column("row").to_pylist()
            targets = zip(*(involved.column(name).to_pylist() for name in FIELDS), strict=True)
            change_of.update(zip(rows, targets, strict=True))

    conflicting: dict[str, tuple[int, ...]] = {}
    followers_of: dict[int, list[int]] = {}
    for conversation_id, rows in rows_of.items():
        rows.sort()
        first = rows[0]
        if any(change_of[row] != change_of[first] for row in rows[1:]):
            # Rows of a conflicting conversation are all invalid: none is sent, none follows.
            conflicting[conversation_id] = tuple(rows)
        else:
            followers_of[first] = rows[1:]
    follower_rows = frozenset(row for rows in followers_of.values() for row in rows)
    return Duplicates(conflicting, followers_of, follower_rows), distinct


def sort_batch(
    checked: pyarrow.RecordBatch,
    duplicates: Duplicates,
    done: set[int] | frozenset[int] = frozenset(),
) -> tuple[list[RowResult], list[RowRequest]]:
    """The run's view of one spooled batch: rows to report as invalid now, and rows to send.

    Rows in `done` (a resumed run's finished rows) and rows that repeat an earlier identical
    row are in neither list.
    """
    columns = checked.to_pydict()
    invalid: list[RowResult] = []
    to_send: list[RowRequest] = []
    changes: dict[tuple[Any, ...], FieldValues] = {}

    def change(values: tuple[Any, ...]) -> FieldValues:
        known = changes.get(values)
        if known is None:
            known = changes[values] = decode_change(values)
        return known

    targets = zip(*(columns[name] for name in FIELDS), strict=True)
    expected = zip(*(columns[f"expect_{name}"] for name in FIELDS), strict=True)
    for row, conversation_id, reason, target, wanted in zip(
        columns["row"], columns["conversation_id"], columns["reason"], targets, expected,
        strict=True,
    ):  # fmt: skip
        if row in done:
            continue
        if reason is not None:
            invalid.append(RowResult(row, conversation_id, Outcome.INVALID, error_message=reason))
            continue
        twins = duplicates.conflicting.get(conversation_id)
        if twins is not None:
            invalid.append(
                RowResult(
                    row,
                    conversation_id,
                    Outcome.INVALID,
                    change=change(target),
                    error_message=conflict_message(twins, row),
                )
            )
        elif row not in duplicates.follower_rows:
            to_send.append(
                RowRequest(row, conversation_id, change(target), expected=change(wanted))
            )
    return invalid, to_send


#: What a dry run records for each row: the journal's results columns it sets, and the
#: report's target columns.
DRY_RUN_COLUMNS = (
    "row",
    "conversation_id",
    "outcome",
    "error_message",
    "change",
    *(f"target_{name}" for name in FIELDS),
)


def dry_run_columns(
    checked: pyarrow.RecordBatch, duplicates: Duplicates
) -> dict[str, pyarrow.Array]:
    """A spooled batch's dry-run results, in columns (DRY_RUN_COLUMNS): every valid row is
    `planned` (a repeat of an identical row too: it is reported as its first row is), every
    other row `invalid` with its reason; `change` is the JSON the journal keeps (the same as
    `json.dumps(change.values)`)."""
    import pyarrow.compute as pc

    reason = checked.column("reason")
    conversation_id = checked.column("conversation_id")
    message = reason
    invalid = pc.is_valid(reason)
    if duplicates.conflicting:
        conflicts = arrays.strings(list(duplicates.conflicting))
        listed = pc.and_not(pc.is_in(conversation_id, value_set=conflicts), invalid)
        at = pc.indices_nonzero(listed)
        if len(at):
            messages = [
                conflict_message(duplicates.conflicting[each], row)
                for each, row in zip(
                    pc.take(conversation_id, at).to_pylist(),
                    pc.take(checked.column("row"), at).to_pylist(),
                    strict=True,
                )
            ]
            message = pc.replace_with_mask(reason, listed, arrays.strings(messages))
            invalid = pc.or_(invalid, listed)
    outcome = pc.if_else(
        invalid, arrays.string(Outcome.INVALID.value), arrays.string(Outcome.PLANNED.value)
    )
    targets = [checked.column(name) for name in FIELDS]
    return {
        "row": checked.column("row"),
        "conversation_id": conversation_id,
        "outcome": outcome,
        "error_message": message,
        "change": change_json(targets),
        # The report's target cells: the checked values are already in its convention.
        **{f"target_{name}": values for name, values in zip(FIELDS, targets, strict=True)},
    }


def change_json(targets: list[pyarrow.Array]) -> pyarrow.Array:
    """Each row's FieldValues as the journal keeps it, `json.dumps(change.values)`, from checked
    FIELDS columns: made once per distinct change."""
    import pyarrow.compute as pc

    codes, changes = _combinations(targets)
    texts = [json.dumps(decode_change(change).values) for change in changes]
    result: pyarrow.Array = pc.take(arrays.strings(texts), codes)
    return result
