"""What became of a row: the one place that decides an outcome from the evidence.

The evidence is what the run knows of the row, never the shape of an answer: its values before
(the snapshot, a resumed intent, or the input's expect_* columns), the change asked, whether
the PATCH was guarded, whether an earlier attempt may have landed (a lost answer), and what the
row holds now (named in the PATCH's answer, or read back). A 204, one object, `[]`, a 404 or a
406 only decide which of those facts are known and which must be read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from pipeline.api.client import returned_values
from pipeline.core.models import (
    FIELDS,
    MAYBE_APPLIED,
    UNCONFIRMED,
    Outcome,
    RowRequest,
    RowResult,
    same_value,
)

Values = Mapping[str, str | None]


def before_values(request: RowRequest) -> dict[str, str | None] | None:
    """The row's values before this run changed it: read (snapshot, intent) or expected."""
    if request.before is not None:
        return request.before.body()
    expected = request.expected.body()
    if expected and all(name in expected for name, _ in request.change.values):
        return expected
    return None


def holds_target(request: RowRequest, values: Values) -> bool:
    return all(same_value(values.get(name), target) for name, target in request.change.values)


def differences(request: RowRequest, returned: Values, before: Values | None) -> str | None:
    """Every field that is not as asked, e.g. "status: closed -> open (not asked to change)".

    A changed field is compared with its target; every other field with its value before, so
    that a proxy filling a default (status=open) into a PATCH that did not name it is caught.
    """
    found = []
    target = request.change.body()
    for name in FIELDS:
        if name in target:
            if name not in returned:
                found.append(f"{name}: not returned")
            elif not same_value(returned[name], target[name]):
                found.append(f"{name}: {_cell(target[name])} -> {_cell(returned[name])}")
        elif before is not None and name in before and name in returned:
            if not same_value(returned[name], before[name]):
                found.append(
                    f"{name}: {_cell(before[name])} -> {_cell(returned[name])} "
                    "(not asked to change)"
                )
    return "; ".join(found) or None


def updated(
    request: RowRequest,
    returned: Values,
    *,
    http_status: int | None,
    attempts: int,
    own_fields_only: bool = False,
    api_sets: frozenset[str] = frozenset(),
) -> RowResult:
    """The row changed by this run, with what it returned and its values before.

    `own_fields_only`: the values come from a read long after the request (a resumed row,
    `attempts` 0), so a field the run did not ask to change may since have been changed by
    someone else: such a field is not reported as a difference unless the run has seen the API
    set that field itself (`api_sets`: on rows whose answers it confirmed). Its value before
    is kept all the same: the undo file, written when the session ends, restores it if by then
    the run has seen the API set it (see side_files.write_undo).
    """
    before = before_values(request)
    compared = before
    if own_fields_only and before is not None:
        kept = {name for name, _ in request.change.values} | api_sets
        compared = {name: value for name, value in before.items() if name in kept}
    return RowResult(
        request.row,
        request.conversation_id,
        Outcome.UPDATED,
        change=request.change,
        http_status=http_status,
        attempts=attempts,
        returned=dict(returned),
        difference=differences(request, returned, compared),
        before=before,
    )


def judge_unnamed(
    request: RowRequest,
    current: dict[str, Any] | None,
    *,
    answer_lists_rows: bool,
    guarded: bool,
    maybe_applied: bool,
    http_status: int | None,
    attempts: int,
) -> RowResult:
    """A row the PATCH's answer did not name, judged by what it holds now (`current`).

    `answer_lists_rows`: the answer listed the rows it changed (an array, `[]`, a 404 or 406
    for "matched nothing", a count of 0) and this row was not among them; otherwise (204, one
    object for several ids) the answer does not say which rows it changed.
    """

    def result(outcome: Outcome, message: str | None = None, **details: Any) -> RowResult:
        return RowResult(
            request.row,
            request.conversation_id,
            outcome,
            change=request.change,
            http_status=http_status,
            attempts=attempts,
            error_message=message,
            **details,
        )

    if current is None:
        return result(Outcome.NOT_FOUND, "no such conversation when read back")
    values = returned_values(current)
    before = before_values(request)
    if holds_target(request, values):
        was_at_target = before is not None and holds_target(request, before)
        if maybe_applied or (not answer_lists_rows and not was_at_target):
            # An earlier attempt of this run landed (its answer was lost), or the accepted
            # PATCH does not list rows and the row now holds exactly what it asked.
            return updated(request, values, http_status=http_status, attempts=attempts)
        return result(
            Outcome.UNCHANGED,
            "already held its target; this run's PATCH did not change it",
            returned=values,
        )
    if guarded:
        return result(
            Outcome.CONFLICT,
            "changed since it was read (it no longer matches the guard); left alone",
            returned=values,
        )
    return result(
        Outcome.FAILED,
        f"the PATCH was answered {http_status} but the row does not hold its target when read back",
        error_code=UNCONFIRMED,
        returned=values,
    )


def unconfirmed(
    requests: Iterable[RowRequest],
    outcome: Outcome,
    *,
    maybe_applied: bool,
    attempts: int,
    http_status: int | None = None,
    error_code: str | None = None,
    error_message: str | None = None,
) -> list[RowResult]:
    """Rows whose request got no usable answer: failed or skipped, saying if it may have landed.

    A row that may have been changed keeps its before-values, so the undo file can restore it.
    """
    return [
        RowResult(
            request.row,
            request.conversation_id,
            outcome,
            change=request.change,
            http_status=http_status,
            attempts=attempts,
            error_code=MAYBE_APPLIED if maybe_applied else error_code,
            error_message=error_message,
            before=before_values(request) if maybe_applied else None,
        )
        for request in requests
    ]


def _cell(value: str | None) -> str:
    return "null" if value is None else value


def skipped(requests: Iterable[RowRequest]) -> list[RowResult]:
    """Rows not finished because the run stopped; a row an earlier session sent says so."""
    return [
        RowResult(
            request.row,
            request.conversation_id,
            Outcome.SKIPPED,
            change=request.change,
            error_code=MAYBE_APPLIED if request.maybe_applied else None,
            before=before_values(request) if request.maybe_applied else None,
        )
        for request in requests
    ]
