"""Export: build an input file from the live account.

`export_rows` writes the conversations a set of query filters selects, with their current
`inbox_id`, `assignee_id` and `status`, as a file `run` takes once its targets are edited
(`verify` checks one against the account). It only reads (GETs), and every GET leaves through
the one request path (`RequestPath`): paced, retried, counted in the account's daily ledger, and
paged so that a short page is never taken for the end.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx

from pipeline.api.client import returned_values
from pipeline.api.request_path import RunControl
from pipeline.commands.query_source import ResolvedQuery, check_filter, resolve_query
from pipeline.commands.read_settings import ProgressCallback, ReadSettings, open_request_path
from pipeline.commands.table_output import TableWriter, cell_text, check_output_path
from pipeline.core.errors import InputError
from pipeline.core.models import FIELDS, normalise_uuid
from pipeline.stages.input.columns import EXPECT_FIELDS, ID_FIELD

#: What export writes: an input for `run`, whose expect_* columns guard each row with the
#: values it had when exported, so an edited file never overwrites a change made since.
EXPORT_COLUMNS: tuple[str, ...] = (ID_FIELD, *FIELDS, *EXPECT_FIELDS)


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote and what it cost."""

    path: Path
    rows: int
    requests: int
    retries: int
    #: The filters as given and as sent (relative dates resolved once, at the start).
    query: ResolvedQuery


# --- filters ------------------------------------------------------------------------------------


def parse_where(items: Sequence[str]) -> dict[str, str]:
    """`--where COLUMN=OP.VALUE` flags as query filters ({COLUMN: OP.VALUE}); InputError."""
    filters: dict[str, str] = {}
    for item in items:
        column, equals, value = item.partition("=")
        column = column.strip().lower()
        if not equals or not column:
            raise InputError(
                f"--where {item!r} must look like COLUMN=OPERATOR.VALUE, e.g. status=eq.open"
            )
        if column in filters:
            # A mapping holds one filter per column; a range takes gte. and lt. in and=(…).
            raise InputError(
                f"--where {column} is given twice; combine the conditions with "
                f"--where 'and=({column}.gte.A,{column}.lt.B)'"
            )
        filters[column] = value
    return filters


def check_query(filters: Mapping[str, str], now: datetime | None = None) -> ResolvedQuery:
    """The filters checked and their relative dates resolved; InputError for a bad one."""
    if not filters:
        # Every conversation of the account is a legitimate export, but rarely meant: it costs
        # one request per 50 conversations. Saying it takes one filter that matches all.
        raise InputError(
            "export needs at least one --where filter, e.g. --where status=eq.open "
            "(every conversation: --where status=not.is.null)"
        )
    for column, value in filters.items():
        try:
            check_filter(column, value)
        except ValueError as error:
            raise InputError(f"--where {column}={value}: {error}") from None
    return resolve_query(filters, now)


# --- export ------------------------------------------------------------------------------------


def export_rows(
    filters: Mapping[str, str],
    output: str | Path,
    settings: ReadSettings,
    *,
    force: bool = False,
    transport: httpx.AsyncBaseTransport | None = None,
    now: datetime | None = None,
    on_progress: ProgressCallback | None = None,
) -> ExportSummary:
    """Write the conversations `filters` select, with their current values, to `output`.

    `filters` are query filters as in a job file ({"status": "eq.open"}, relative dates
    allowed), ANDed. The file (.csv or .parquet) holds `conversation_id`, `inbox_id`,
    `assignee_id`, `status` and the same values again as `expect_*`, in id order; it appears
    under its name only once complete. Raises InputError (nothing sent) for a bad filter,
    path or setting, RunStopped (budget spent, token refused, interrupted) or RemoteError.
    """
    return anyio.run(
        partial(
            export_rows_async,
            filters,
            output,
            settings,
            force=force,
            transport=transport,
            now=now,
            on_progress=on_progress,
        )
    )


async def export_rows_async(
    filters: Mapping[str, str],
    output: str | Path,
    settings: ReadSettings,
    *,
    force: bool = False,
    transport: httpx.AsyncBaseTransport | None = None,
    now: datetime | None = None,
    on_progress: ProgressCallback | None = None,
) -> ExportSummary:
    """The same as `export_rows`, inside a running event loop."""
    query = check_query(filters, now)
    path = check_output_path(Path(output), flag="--output", force=force)
    settings.check()
    control = RunControl()
    rows = 0
    with TableWriter(EXPORT_COLUMNS, path) as writer:
        async with open_request_path(settings, control, transport) as request_path:
            async for page in request_path.query_pages(query.resolved):
                writer.write([_export_record(row) for row in page])
                rows += len(page)
                if control.stop_reason is not None:
                    raise control.stop_reason
                if on_progress is not None:
                    on_progress(rows, control.requests)
    return ExportSummary(path, rows, control.requests, control.retries, query)


def _export_record(row: Mapping[str, Any]) -> dict[str, str]:
    values = returned_values(dict(row))
    record = {ID_FIELD: normalise_uuid(str(row["id"]))}
    for name in FIELDS:
        # The input's cell convention: "null" is JSON null, an empty cell leaves a field alone.
        record[name] = cell_text(values, name)
        record[f"expect_{name}"] = record[name]
    return record
