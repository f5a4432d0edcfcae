"""A job's query source: the ids a set of PostgREST filters selects, read into a CSV file.

The filters are checked without network (`check_filter`), their relative dates (`{now-30d}`)
are resolved once (`resolve_query`), and the ids are read page by page (`select_ids`) under the
job's rate, retry policy and daily budget. The resolved filters are also the run's guard: every
PATCH carries them, so a conversation that stopped matching since it was read is left alone.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import httpx

from pipeline.api.request_path import RunControl
from pipeline.commands.read_settings import open_request_path
from pipeline.core.models import CONVERSATION_COLUMNS, normalise_uuid
from pipeline.core.run_dir import RunDir
from pipeline.orchestrator.settings import RunSettings

OPERATORS: tuple[str, ...] = ("eq", "neq", "lt", "lte", "gt", "gte", "in", "is", "like", "ilike")
_IS_VALUES = ("null", "not_null", "true", "false", "unknown")

_RELATIVE_DATE = re.compile(r"\{(now|today)(?:([+-])(\d+)([mhdw]))?\}")
_PLACEHOLDER = re.compile(r"\{[^{}]*\}")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


#: Query parameters that combine conditions instead of naming a column: `or=(a.eq.1,b.is.null)`.
LOGIC_KEYS = ("or", "and", "not.or", "not.and")


def check_filter(column: str, value: str) -> None:
    """Raise ValueError, saying what is wrong, unless `column=value` is a filter we can send.

    `column` may also be `or`/`and` (PostgREST's logic trees): `or=(status.eq.open,
    latest_inbound_message_created_at.is.null)`, items nested as `and(…)`/`or(…)`.
    """
    if column in LOGIC_KEYS:
        if not (value.startswith("(") and value.endswith(")")):
            raise ValueError(
                f"{column}={value!r}: a logic filter takes a list in parentheses, e.g. "
                "(status.eq.open,assignee_id.is.null)"
            )
        for item in _tree_items(value[1:-1], column, value):
            _check_tree_item(item, value)
        return
    _check_column(column)
    _check_condition(value)


def _check_column(column: str) -> None:
    if column == "id":
        raise ValueError(
            "a query cannot filter on id (the ids are what it reads; use a file source "
            "for a list of ids)"
        )
    if column not in CONVERSATION_COLUMNS:
        raise ValueError(
            f"unknown column {column!r}; columns are {', '.join(CONVERSATION_COLUMNS)}"
        )


def _check_condition(value: str) -> None:
    """`OPERATOR.VALUE`, optionally after `not.`: the part of a filter after the column."""
    text = value[4:] if value.startswith("not.") else value
    operator, dot, operand = text.partition(".")
    if not dot or operator not in OPERATORS:
        raise ValueError(
            f"{value!r} must look like OPERATOR.VALUE (e.g. eq.open), with OPERATOR one of "
            f"{', '.join(OPERATORS)}, optionally after not."
        )
    if not operand:
        raise ValueError(f"{value!r} has no value after {operator}.")
    if operator == "in" and not (operand.startswith("(") and operand.endswith(")")):
        raise ValueError(f"{value!r}: in. takes a list in parentheses, e.g. in.(open,closed)")
    if operator == "is" and operand not in _IS_VALUES:
        raise ValueError(f"{value!r}: is. takes one of {', '.join(_IS_VALUES)}")
    for placeholder in _PLACEHOLDER.findall(operand):
        if not _RELATIVE_DATE.fullmatch(placeholder):
            raise ValueError(
                f"unknown placeholder {placeholder} in {value!r}; use {{now}}, {{today}} or an "
                "offset such as {now-30d}, {now-12h}, {today-7d} (units m, h, d, w)"
            )


def _check_tree_item(item: str, whole: str) -> None:
    """One item of a logic tree: `column.op.value` or a nested `and(…)`/`or(…)`."""
    for logic in ("or", "and", "not.or", "not.and"):
        if item.startswith(logic + "(") and item.endswith(")"):
            for nested in _tree_items(item[len(logic) + 1 : -1], logic, whole):
                _check_tree_item(nested, whole)
            return
    column, dot, condition = item.partition(".")
    if not dot:
        raise ValueError(f"{item!r} in {whole!r} must look like column.operator.value")
    _check_column(column)
    _check_condition(condition)


def _tree_items(text: str, key: str, whole: str) -> list[str]:
    """The comma-separated items of a logic tree, commas inside (…) and "…" left alone."""
    items, depth, quoted, start = [], 0, False, 0
    for position, character in enumerate(text):
        if character == '"':
            quoted = not quoted
        elif not quoted and character == "(":
            depth += 1
        elif not quoted and character == ")":
            depth -= 1
            if depth < 0:
                raise ValueError(f"{key}={whole!r}: unbalanced parentheses")
        elif not quoted and depth == 0 and character == ",":
            items.append(text[start:position].strip())
            start = position + 1
    items.append(text[start:].strip())
    if depth != 0 or quoted:
        raise ValueError(f"{key}={whole!r}: unbalanced parentheses or quotes")
    if not all(items):
        raise ValueError(f"{key}={whole!r}: an empty item")
    return items


def resolve_dates(value: str, now: datetime) -> tuple[str, dict[str, str]]:
    """`value` with each relative date replaced by a UTC ISO timestamp, and what each became.

    `{today}` is midnight UTC of `now`'s date; offsets count back (or forward) from it.
    """
    resolved: dict[str, str] = {}

    def replace(match: re.Match[str]) -> str:
        anchor, sign, amount, unit = match.groups()
        moment = now if anchor == "now" else datetime.combine(now.date(), datetime.min.time(), UTC)
        if amount is not None:
            offset = timedelta(**{_UNITS[unit]: int(amount)})
            moment = moment - offset if sign == "-" else moment + offset
        text = moment.isoformat(timespec="seconds")
        resolved[match.group(0)] = text
        return text

    return _RELATIVE_DATE.sub(replace, value), resolved


@dataclass(frozen=True)
class ResolvedQuery:
    """A query's filters as written, and as sent: relative dates fixed once, at the start."""

    filters: Mapping[str, str]
    #: The filters with their dates resolved: what every GET and every PATCH (as guard) carries.
    resolved: Mapping[str, str]
    #: Each relative date and the timestamp it became, e.g. {"{now-30d}": "2026-10-28T..."}.
    dates: Mapping[str, str]
    resolved_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "filters": dict(self.filters),
            "resolved": dict(self.resolved),
            "dates": dict(self.dates),
            "resolved_at": self.resolved_at.isoformat(timespec="seconds"),
        }


def resolve_query(filters: Mapping[str, str], now: datetime | None = None) -> ResolvedQuery:
    """Check every filter and resolve its relative dates against `now` (default: UTC now)."""
    moment = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    resolved: dict[str, str] = {}
    dates: dict[str, str] = {}
    for column, value in filters.items():
        check_filter(column, value)
        resolved[column], found = resolve_dates(value, moment)
        dates.update(found)
    return ResolvedQuery(dict(filters), resolved, dates, moment)


@dataclass(frozen=True)
class SelectedIds:
    """What a query read: how many conversations it selected, where their ids are, its cost."""

    query: ResolvedQuery
    ids_path: Path
    rows: int
    requests: int
    retries: int


async def select_ids(
    query: ResolvedQuery,
    settings: RunSettings,
    run_dir: Path,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
) -> SelectedIds:
    """Read the ids `query` selects into `run_dir`/query-ids.csv; record it in query.json.

    Uses the run's base URL, token, rate, timeout, attempts and daily budget (each GET is
    taken from the account's ledger). Raises RunStopped (budget spent, token refused) or
    RemoteError (an answer no retry fixes); nothing is changed by a query.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    ids_path = RunDir(run_dir).query_ids
    control = RunControl()
    ids: list[str] = []
    async with open_request_path(settings, control, transport) as path:
        async for rows in path.query_pages(query.resolved):
            ids += [normalise_uuid(str(row["id"])) for row in rows]
            if control.stop_reason is not None:
                raise control.stop_reason
    requests, retries = control.requests, control.retries
    if settings.rate:
        # The run's own pacer starts afresh: one interval's pause keeps the last GET and the
        # first PATCH from arriving as a burst.
        await anyio.sleep(1 / settings.rate)
    await anyio.to_thread.run_sync(_write_ids, ids_path, ids)
    record = {**query.to_json(), "rows": len(ids), "requests": requests, "retries": retries}
    RunDir(run_dir).query_record.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return SelectedIds(query, ids_path, len(ids), requests, retries)


def _write_ids(path: Path, ids: list[str]) -> None:
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["conversation_id"])
        writer.writerows([each] for each in ids)
    partial.replace(path)
