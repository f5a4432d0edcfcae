"""Export and verify: build an input file from the live account, and check one against it.

`export_rows` writes the conversations a set of query filters selects, with their current
`inbox_id`, `assignee_id` and `status`, as a file `run` takes once its targets are edited.
`verify_rows` reads an input file's conversations and says, row by row, whether each is at its
targets. Both only read (GETs), and every GET leaves through the one request path
(`RequestPath`): paced, retried, counted in the account's daily ledger, and paged so that a
short page is never taken for the end.
"""

from __future__ import annotations

import csv
import dataclasses
import enum
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx

from pipeline.api.client import BASE_URL_VARIABLE, DEFAULT_BASE_URL, MateoClient, returned_values
from pipeline.api.quota import DEFAULT_DAILY_QUOTA, QuotaLedger
from pipeline.api.request_path import RequestPath, RunControl
from pipeline.commands.query_source import ResolvedQuery, check_filter, resolve_query
from pipeline.core.errors import InputError
from pipeline.core.models import (
    FIELDS,
    ConversationIds,
    InvalidRow,
    RowRequest,
    normalise_uuid,
    same_value,
)
from pipeline.orchestrator.settings import RunSettings
from pipeline.stages.input.columns import EXPECT_FIELDS, ID_FIELD
from pipeline.stages.input.opening import open_input
from pipeline.stages.validate import validate_row

#: What export writes: an input for `run`, whose expect_* columns guard each row with the
#: values it had when exported, so an edited file never overwrites a change made since.
EXPORT_COLUMNS: tuple[str, ...] = (ID_FIELD, *FIELDS, *EXPECT_FIELDS)
#: Output formats of export and of verify's report, picked by the file's suffix.
OUTPUT_SUFFIXES: tuple[str, ...] = (".csv", ".parquet")
#: Input rows verified per batch of reads: memory stays flat however long the file is.
VERIFY_CHUNK_ROWS = 1_000
#: Rows not at their target that a verify summary quotes; the report holds them all.
EXAMPLES = 5

#: Called after each page with (rows so far, requests so far).
ProgressCallback = Callable[[int, int], None]


class VerifyState(enum.StrEnum):
    """What verify found for one input row; the report's `state` column."""

    AT_TARGET = "at_target"
    DIFFERS = "differs"
    #: No conversation has this id (deleted, or not visible to this token).
    GONE = "gone"
    #: The row cannot be checked: a bad id or target, or no target at all.
    INVALID = "invalid"


VERIFY_COLUMNS: tuple[str, ...] = (
    "row",
    ID_FIELD,
    "state",
    *(f"target_{name}" for name in FIELDS),
    *(f"current_{name}" for name in FIELDS),
    "detail",
)


@dataclass(frozen=True)
class ReadSettings:
    """How export and verify reach the API: the run settings that matter to reads."""

    token: str = field(default="", repr=False)
    #: MATEO_BASE_URL when set, else Mateo's own (as for a run).
    base_url: str = field(
        default_factory=lambda: os.environ.get(BASE_URL_VARIABLE) or DEFAULT_BASE_URL
    )
    #: Requests per second; None for no limit (the sandbox, tests).
    rate: float | None = 2.0
    max_attempts: int = 5
    timeout: float = 10.0
    transport: str = "aiohttp"
    daily_quota: int = DEFAULT_DAILY_QUOTA
    #: The most requests this export or verify may send; None for no limit of its own.
    max_requests: int | None = None
    quota_reset_utc: str = "00:00"
    max_wait: float = 60.0
    wait: bool = False
    quota_clock: Callable[[], datetime] | None = field(default=None, repr=False, compare=False)

    def check(self) -> None:
        """Raise InputError for a value no read could use (RunSettings' own checks)."""
        if not self.token:
            raise InputError(
                "no API token: set MATEO_API_TOKEN or pass --token-file PATH (or use --sandbox)"
            )
        self._as_run_settings().check()

    def ledger(self) -> QuotaLedger | None:
        """The account's daily budget, shared with every run and job on this machine."""
        return self._as_run_settings().ledger()

    def _as_run_settings(self) -> RunSettings:
        # One set of checks and one ledger for every command: a read's settings are a run's.
        shared = {spec.name for spec in dataclasses.fields(self)}
        return RunSettings(input="-", **{name: getattr(self, name) for name in shared})


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote and what it cost."""

    path: Path
    rows: int
    requests: int
    retries: int
    #: The filters as given and as sent (relative dates resolved once, at the start).
    query: ResolvedQuery


@dataclass(frozen=True)
class VerifySummary:
    """How many input rows are at their targets, and what the check cost."""

    rows: int
    #: Rows by state, every state present (zero included).
    counts: Mapping[VerifyState, int]
    requests: int
    retries: int
    report_path: Path | None
    #: The first rows not at their target, one line each ("row 3 <id>: status is open, …").
    examples: tuple[str, ...] = ()

    @property
    def exit_code(self) -> int:
        """0 when every row is at its target; 1 otherwise (invalid rows included)."""
        return 0 if self.counts[VerifyState.AT_TARGET] == self.rows else 1


# --- filters and paths ---------------------------------------------------------------------------


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


def check_output_path(path: Path, *, flag: str, force: bool = True) -> Path:
    """`path` if it can be written as CSV or Parquet; InputError before anything is sent."""
    if path.suffix.lower() not in OUTPUT_SUFFIXES:
        raise InputError(
            f"{flag} {str(path)!r}: the suffix must be one of {', '.join(OUTPUT_SUFFIXES)}"
        )
    if path.is_dir():
        raise InputError(f"{flag} {str(path)!r} is a directory; give a file name")
    if path.exists() and not force:
        raise InputError(f"{flag} {str(path)!r} exists; pass --force to replace it")
    return path


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
    with _TableWriter(EXPORT_COLUMNS, path) as writer:
        async with _request_path(settings, control, transport) as request_path:
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
        record[name] = _cell(values, name)
        record[f"expect_{name}"] = record[name]
    return record


def _cell(values: Mapping[str, str | None], name: str) -> str:
    if name not in values:
        return ""
    value = values[name]
    return "null" if value is None else value


# --- verify ------------------------------------------------------------------------------------


def verify_rows(
    input: str | Path,
    settings: ReadSettings,
    *,
    column_map: Mapping[str, str] | None = None,
    fixed_values: Mapping[str, str | None] | None = None,
    delimiter: str | None = None,
    sheet: str | int | None = None,
    report: str | Path | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    on_progress: ProgressCallback | None = None,
) -> VerifySummary:
    """Read the conversations of an input file and compare each with the row's targets.

    The input is read as `run` reads it (`column_map`, `fixed_values` as `--map`/`--set`,
    `delimiter`, `sheet`); its expect_* columns are not targets and are ignored. Each row is
    `at_target`, `differs`, `gone` or `invalid`; `report` (.csv or .parquet) gets one line per
    row with the current values. Sends GETs only. Raises InputError (nothing sent) for a bad
    file or setting, RunStopped or RemoteError.
    """
    return anyio.run(
        partial(
            verify_rows_async,
            input,
            settings,
            column_map=column_map,
            fixed_values=fixed_values,
            delimiter=delimiter,
            sheet=sheet,
            report=report,
            transport=transport,
            on_progress=on_progress,
        )
    )


async def verify_rows_async(
    input: str | Path,
    settings: ReadSettings,
    *,
    column_map: Mapping[str, str] | None = None,
    fixed_values: Mapping[str, str | None] | None = None,
    delimiter: str | None = None,
    sheet: str | int | None = None,
    report: str | Path | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    on_progress: ProgressCallback | None = None,
) -> VerifySummary:
    """The same as `verify_rows`, inside a running event loop."""
    report_path = None if report is None else check_output_path(Path(report), flag="--report")
    fixed = dict(fixed_values or {})
    control = RunControl()
    counts = dict.fromkeys(VerifyState, 0)
    examples: list[str] = []
    with open_input(input, column_map=column_map, delimiter=delimiter, sheet=sheet) as input_file:
        settings.check()
        with _TableWriter(VERIFY_COLUMNS, report_path) as writer:
            async with _request_path(settings, control, transport) as request_path:
                for chunk in input_file.chunks(VERIFY_CHUNK_ROWS):
                    judged = [validate_row(row, fixed) for row in chunk]
                    ids = [
                        each.conversation_id for each in judged if not isinstance(each, InvalidRow)
                    ]
                    current = await request_path.read_rows(ConversationIds(ids)) if ids else {}
                    if control.stop_reason is not None:
                        raise control.stop_reason
                    records = [_verify_record(each, current) for each in judged]
                    writer.write(records)
                    for record in records:
                        state = VerifyState(record["state"])
                        counts[state] += 1
                        if state is not VerifyState.AT_TARGET and len(examples) < EXAMPLES:
                            examples.append(_example(record))
                    if on_progress is not None:
                        on_progress(sum(counts.values()), control.requests)
    return VerifySummary(
        sum(counts.values()),
        counts,
        control.requests,
        control.retries,
        report_path,
        tuple(examples),
    )


def _verify_record(
    judged: RowRequest | InvalidRow, current: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    record: dict[str, Any] = {"row": judged.row, ID_FIELD: judged.conversation_id}
    if isinstance(judged, InvalidRow):
        return {**record, "state": VerifyState.INVALID.value, "detail": judged.reason}
    targets = judged.change.body()
    for name in FIELDS:
        record[f"target_{name}"] = _cell(targets, name)
    found = current.get(judged.conversation_id)
    if found is None:
        record["state"] = VerifyState.GONE.value
        record["detail"] = "no such conversation (deleted, or not visible to this token)"
        return record
    values = returned_values(dict(found))
    for name in FIELDS:
        record[f"current_{name}"] = _cell(values, name)
    differences = [
        f"{name} is {_cell(values, name) or '(not returned)'}, target {_cell(targets, name)}"
        for name in targets
        if name not in values or not same_value(values[name], targets[name])
    ]
    record["state"] = (VerifyState.DIFFERS if differences else VerifyState.AT_TARGET).value
    record["detail"] = "; ".join(differences)
    return record


def _example(record: Mapping[str, Any]) -> str:
    return f"row {record['row']} {record[ID_FIELD]}: {record['state']}: {record['detail']}"


# --- shared ------------------------------------------------------------------------------------


@asynccontextmanager
async def _request_path(
    settings: ReadSettings, control: RunControl, transport: httpx.AsyncBaseTransport | None
) -> AsyncIterator[RequestPath]:
    """The one request path over a client for `settings`, drawing on the account's ledger."""
    ledger = settings.ledger()
    try:
        async with MateoClient(
            settings.base_url,
            settings.token,
            timeout=settings.timeout,
            # Pages are read one after the other: the keyset needs the last page's last id.
            max_connections=1,
            transport=transport,
            transport_kind=settings.transport,
        ) as client:
            yield RequestPath(
                client,
                control,
                rate=settings.rate,
                max_attempts=settings.max_attempts,
                ledger=ledger,
                max_wait=settings.max_wait,
                wait_for_reset=settings.wait,
            )
    finally:
        if ledger is not None:
            ledger.close()


class _TableWriter:
    """Rows of text cells to CSV or Parquet (by the suffix), in batches; no path: no file.

    The rows go to `<path>.partial`, which becomes `path` only when the block ends without an
    error: a file under its own name is always whole. Parquet rows are buffered into row
    groups of ROW_GROUP rows (a row group per page of 50 would make a file slow to read).
    """

    ROW_GROUP = 10_000

    def __init__(self, columns: tuple[str, ...], path: Path | None) -> None:
        self._columns = columns
        self._path = path
        self._partial = None if path is None else path.with_name(path.name + ".partial")
        self._file: Any = None
        self._csv: Any = None
        self._pending: list[dict[str, Any]] = []

    def __enter__(self) -> _TableWriter:
        if self._path is None or self._partial is None:
            return self
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            if self._path.suffix.lower() == ".parquet":
                import pyarrow as pa
                import pyarrow.parquet as pq

                self._schema = pa.schema(
                    [(name, pa.int64() if name == "row" else pa.string()) for name in self._columns]
                )
                self._file = pq.ParquetWriter(self._partial, self._schema)
            else:
                self._file = self._partial.open("w", newline="", encoding="utf-8")
                self._csv = csv.DictWriter(self._file, fieldnames=self._columns)
                self._csv.writeheader()
        except OSError as error:
            raise InputError(f"{self._path}: cannot write it ({type(error).__name__})") from None
        return self

    def write(self, records: list[dict[str, Any]]) -> None:
        if self._file is None:
            return
        if self._csv is not None:
            self._csv.writerows(records)
            return
        self._pending += records
        if len(self._pending) >= self.ROW_GROUP:
            self._flush()

    def _flush(self) -> None:
        import pyarrow as pa

        if self._pending:
            filled = [
                {name: record.get(name) for name in self._columns} for record in self._pending
            ]
            self._file.write_table(pa.Table.from_pylist(filled, schema=self._schema))
            self._pending = []

    def __exit__(self, error_type: type[BaseException] | None, *_: object) -> None:
        if self._file is None or self._path is None or self._partial is None:
            return
        try:
            if error_type is None and self._csv is None:
                self._flush()
        finally:
            self._file.close()
        if error_type is None:
            self._partial.replace(self._path)
        else:
            # A half-read answer is not the answer: leave no file that looks like one.
            self._partial.unlink(missing_ok=True)
