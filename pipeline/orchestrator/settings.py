"""What a run is asked to do: every setting, checked, and how the journal keeps them; each run
option with its flag, job-file key and checks (pipeline.orchestrator.options)."""

from __future__ import annotations

import dataclasses
import functools
import os
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from pipeline.api.client import BASE_URL_VARIABLE, DEFAULT_BASE_URL
from pipeline.api.quota import DEFAULT_DAILY_QUOTA, QuotaLedger, parse_reset_time
from pipeline.api.wire import TRANSPORTS, check_base_url
from pipeline.core.errors import InputError
from pipeline.core.models import Guard
from pipeline.orchestrator.options import (
    Choice,
    Invalid,
    Number,
    RunOption,
    Switch,
    Text,
    got,
    option,
    options_of,
    toml_text,
)
from pipeline.stages.report import REPORT_FORMATS, check_report_path

if TYPE_CHECKING:
    import pandas
    import pyarrow

#: Placeholders of a job's `report` and `run_dir`.
PATH_PLACEHOLDERS = ("job", "date", "timestamp")


# --- How a job file's text values are checked (each returns the value, or raises Invalid) -------


def check_placeholders(text: str) -> None:
    """Invalid unless every {placeholder} of a job's path is one of PATH_PLACEHOLDERS."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]
    except ValueError as error:
        raise Invalid(f"{text!r}: {error}; a literal brace is written {{{{ or }}}}") from None
    for name in names:
        if name not in PATH_PLACEHOLDERS:
            shown = ", ".join(f"{{{each}}}" for each in PATH_PLACEHOLDERS)
            raise Invalid(f"unknown placeholder {{{name}}} in {text!r}; use {shown}")


def _job_path_template(value: Any) -> str:
    text = toml_text(value)
    if not text.strip():
        raise Invalid("must not be empty")
    check_placeholders(text)
    return text


def _job_report_path(value: Any) -> str:
    text = _job_path_template(value)
    if Path(text).suffix.lower() not in REPORT_FORMATS:
        raise Invalid(f"the suffix must be one of {', '.join(REPORT_FORMATS)}, {got(value)}")
    return text


def _job_reset_time(value: Any) -> str:
    try:
        parse_reset_time(toml_text(value))
    except InputError:
        raise Invalid(f'must be HH:MM in UTC, e.g. "00:00", {got(value)}') from None
    return str(value)


def _job_delimiter(value: Any) -> str:
    if len(toml_text(value)) != 1:
        raise Invalid(f'must be one character such as "," or ";", {got(value)}')
    return str(value)


def _job_sheet(value: Any) -> str | int:
    """A workbook's sheet: its name, or its number counted from 1."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise Invalid(f'must be a sheet name such as "Rows" or a number from 1, {got(value)}')
    if isinstance(value, int) and value < 1:
        raise Invalid(f"sheets are numbered from 1, {got(value)}")
    if isinstance(value, str) and not value.strip():
        raise Invalid("must not be empty")
    return value


def _job_base_url(value: Any) -> str:
    try:
        return check_base_url(toml_text(value))
    except InputError as error:
        raise Invalid(str(error).removeprefix("--base-url ")) from None


def _check_report_setting(path: str | Path) -> None:
    check_report_path(Path(path))


@dataclass(frozen=True)
class RunSettings:
    """Everything a run needs; the CLI's flags map one to one onto these fields.

    A field made with `option(...)` is a run option: its flag, help, job-file key and checks
    are in its metadata (pipeline.orchestrator.options), and the CLI's flags, the job file's
    keys and the docs' rows are made from it (`run_options()`).
    """

    #: A .csv, .parquet, .xlsx, .xlsm, .xls or .ods file ("-": CSV from stdin), or a pandas
    #: DataFrame or pyarrow Table with the same columns (kept in the run directory as Parquet:
    #: see pipeline.stages.frames).
    input: str | Path | pandas.DataFrame | pyarrow.Table
    token: str = field(default="", repr=False)
    #: MATEO_BASE_URL when set (as on the command line), else Mateo's own: a script pointed at
    #: the sandbox by the variable must not talk to production.
    base_url: str = option(
        default_factory=lambda: os.environ.get(BASE_URL_VARIABLE) or DEFAULT_BASE_URL,
        help=f"the API's base URL (default {DEFAULT_BASE_URL}, or {BASE_URL_VARIABLE}); "
        "plain http:// only for loopback hosts",
        group="API",
        table="api",
        kind=Text(toml=_job_base_url),
        metavar="URL",
    )
    column_map: Mapping[str, str] = field(default_factory=dict)
    #: Values set for every row (`--set`), already parsed: None means JSON null.
    fixed_values: Mapping[str, str | None] = field(default_factory=dict)
    #: Requests per second; None for no limit (the sandbox, benchmarks).
    rate: float | None = option(
        2.0,
        help="requests per second, or 'unlimited' (default 2: Mateo allows 2/s, 10,000/day)",
        group="sending",
        table="limits",
        kind=Number(float, 0, above=True, unit="requests per second", unlimited=True),
        metavar="RPS",
    )
    concurrency: int = option(
        4,
        help="requests in flight at most (default 4)",
        group="sending",
        table="limits",
        kind=Number(int, 1),
        metavar="N",
    )
    batch_size: int = option(
        50,
        help="ids per grouped PATCH, at most 100 (default 50; 1 = one request per row)",
        group="sending",
        table="limits",
        # Past ~100 uuids an `in.(…)` URL nears the 8 KB that proxies accept.
        kind=Number(int, 1, high=100),
        metavar="N",
    )
    max_attempts: int = option(
        5,
        help="attempts per request on 429, 5xx, timeouts and connection errors (default 5)",
        group="sending",
        table="limits",
        kind=Number(int, 1),
        metavar="N",
    )
    timeout: float = option(
        10.0,
        help="seconds per request (default 10; Mateo cuts requests off at 2 s)",
        group="sending",
        table="limits",
        kind=Number(float, 0, above=True, unit="seconds", flag_low=0.001),
        metavar="S",
    )
    dry_run: bool = option(
        False,
        help="validate and write the report; send nothing",
        group="output",
        table="output",
        kind=Switch(),
    )
    run_dir: Path | None = option(
        None,
        help="where the run's files go (default runs/<UTC time>-<input name>/)",
        group="output",
        table="output",
        kind=Text(toml=_job_path_template, path=True),
        metavar="DIR",
    )
    report: Path | None = option(
        None,
        help="report file, .csv, .parquet or .jsonl (default <run dir>/report.csv)",
        group="output",
        table="output",
        kind=Text(toml=_job_report_path, setting=_check_report_setting, path=True),
        metavar="PATH",
    )
    delimiter: str | None = option(
        None,
        help="CSV delimiter (default: detected from the header)",
        group="columns and values",
        table="source",
        kind=Text(toml=_job_delimiter),
        metavar="CHAR",
    )
    #: A workbook's sheet (.xlsx, .xlsm, .xls, .ods): its name, or its number counted from 1;
    #: None for the first. Kept with the run, so `resume` reads the same sheet.
    sheet: str | int | None = option(
        None,
        help="the sheet of an .xlsx, .xlsm, .xls or .ods workbook to read: its name, or its "
        "number counted from 1 (default: the first sheet)",
        group="columns and values",
        table="source",
        kind=Text(toml=_job_sheet),
        metavar="NAME|N",
    )
    strict: bool = option(
        False,
        help="send nothing if any row is invalid: exit 2 naming every invalid row (the report "
        "and the failures file are written)",
        group="columns and values",
        table="source",
        kind=Switch(),
    )
    transport: str = option(
        "aiohttp",
        help="HTTP connection pool (default aiohttp; see bench/ for why)",
        group="sending",
        table="limits",
        kind=Choice(TRANSPORTS),
    )
    #: How long an idle worker waits for a partial group to fill before sending it.
    max_group_wait: float = 0.5
    #: The account's requests per API day, shared by every run on this machine.
    daily_quota: int = option(
        DEFAULT_DAILY_QUOTA,
        help="requests the account may send per day, shared by every run on this machine "
        f"(default {DEFAULT_DAILY_QUOTA:,})",
        group="daily budget",
        table="limits",
        kind=Number(int, 1),
        metavar="N",
    )
    #: The most requests this run may send; None for no limit of its own.
    max_requests: int | None = option(
        None,
        help="the most requests this run may send; then it stops, resumable",
        group="daily budget",
        table="limits",
        kind=Number(int, 1),
        metavar="N",
    )
    #: When the API's day starts, HH:MM in UTC.
    quota_reset_utc: str = option(
        "00:00",
        help="when the API's day starts, in UTC (default 00:00)",
        group="daily budget",
        table="limits",
        kind=Text(toml=_job_reset_time, setting=parse_reset_time),
        metavar="HH:MM",
    )
    #: A 429 asking to wait longer than this stops the run (resumable), unless `wait`.
    max_wait: float = option(
        60.0,
        help="a 429 asking to wait longer stops the run, resumable (default 60)",
        group="daily budget",
        table="limits",
        kind=Number(float, 0, unit="seconds"),
        metavar="S",
    )
    #: Sleep until the budget resets instead of stopping.
    wait: bool = option(
        False,
        help="when the budget or the API's limit is spent, sleep until it resets, not stop",
        group="daily budget",
        table="limits",
        kind=Switch(),
    )
    #: Read each row's current values first: rows already in their target state cost no PATCH,
    #: each PATCH is guarded by the values read, and the run can write an undo file.
    snapshot: bool = option(
        True,
        help="do not read rows before changing them (fewest requests; no unchanged-skipping, "
        "no snapshot guard, no undo file)",
        group="before writing",
        table="safety",
        kind=Switch(),
        flag="--no-snapshot",
    )
    #: Guard each PATCH with the values it was planned from (and expect_* columns).
    guarded: bool = option(
        True,
        help="send PATCHes without the values read as filters (a row changed meanwhile is "
        "overwritten)",
        group="before writing",
        table="safety",
        kind=Switch(),
        flag="--no-guard",
    )
    #: Stop after the snapshot: write the plan, change nothing (`mateo-bulk plan`).
    plan_only: bool = False
    #: PostgREST filters every PATCH also carries, e.g. {"status": "eq.open"}: a row that no
    #: longer matches them is left alone and reported `conflict` (a job's query uses this).
    query_guard: Mapping[str, str] = field(default_factory=dict)
    #: The most rows the run may change (`--max-changes`): more, and nothing is sent. Counted
    #: before the snapshot, so rows already at their target count too. None: no limit.
    max_changes: int | None = option(
        None,
        help="refuse to start (exit 2, nothing sent) if more than N rows would change; counted "
        "before the snapshot: rows already at their target count too (apply: the plan's "
        "change rows; job: the query's selection)",
        group="before writing",
        table="safety",
        kind=Number(int, 0, unit="rows"),
        metavar="N",
    )
    #: The input (or a job's query) must yield exactly this many rows (`--expect-rows`).
    expect_rows: int | None = option(
        None,
        help="refuse to start (exit 2, nothing sent) unless the input has exactly N data rows "
        "(apply: the plan's change rows; job: the query selects exactly N)",
        group="before writing",
        table="safety",
        kind=Number(int, 0, unit="rows"),
        metavar="N",
    )
    #: The ledger's clock (tests pass a fake one to cross midnight); not a journaled setting.
    quota_clock: Callable[[], datetime] | None = field(default=None, repr=False, compare=False)

    def check(self) -> None:
        """Raise InputError for a value no run could use."""
        for each in run_options():
            each.check(getattr(self, each.name))
        try:
            Guard.of(self.query_guard)
        except ValueError as error:
            raise InputError(str(error)) from None
        if not self.dry_run:
            check_base_url(self.base_url)
            if not self.token:
                raise InputError(
                    "no API token: set MATEO_API_TOKEN or pass --token-file PATH "
                    "(or use --sandbox or --dry-run)"
                )
            try:
                httpx.Headers({"Authorization": f"Bearer {self.token}"})
            except (UnicodeEncodeError, ValueError):
                raise InputError("the API token holds characters a header cannot carry") from None

    def check_row_counts(self, rows: int, changes: int) -> None:
        """Raise InputError, before anything is sent, when the input's counts are not the ones
        the run was told to expect: `rows` data rows, `changes` conversations to change."""
        if self.expect_rows is not None and rows != self.expect_rows:
            raise InputError(
                f"the input has {rows:,} rows, not the {self.expect_rows:,} of --expect-rows; "
                "nothing was sent"
            )
        if self.max_changes is not None and changes > self.max_changes:
            raise InputError(
                f"the input yields {changes:,} rows to change, more than --max-changes "
                f"{self.max_changes:,}; nothing was sent"
            )

    def to_meta(self) -> dict[str, Any]:
        """The settings as JSON values, without the token: what the journal keeps."""
        values = {}
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if spec.name in ("token", "quota_clock"):
                continue
            values[spec.name] = str(value) if isinstance(value, Path) else value
        values["column_map"] = dict(self.column_map)
        values["fixed_values"] = dict(self.fixed_values)
        values["query_guard"] = dict(self.query_guard)
        return values

    @classmethod
    def from_meta(cls, values: Mapping[str, Any], token: str) -> RunSettings:
        paths = {"run_dir", "report"}
        known = {spec.name for spec in dataclasses.fields(cls)}
        arguments: dict[str, Any] = {
            name: (Path(value) if name in paths and value is not None else value)
            for name, value in ((_RENAMED.get(name, name), value) for name, value in values.items())
            if name in known
        }
        return cls(**{**arguments, "token": token})

    def ledger(self) -> QuotaLedger | None:
        """The account's daily budget this run draws from; None without a token (a dry run)."""
        if not self.token:
            return None
        return QuotaLedger(
            self.token,
            daily_quota=self.daily_quota,
            max_requests=self.max_requests,
            reset_at=parse_reset_time(self.quota_reset_utc),
            clock=self.quota_clock,
        )


#: Settings a journal may hold under an earlier name, by that name: a name left unknown would
#: be dropped, and a resumed run would go on without that setting.
_RENAMED = {"guard": "query_guard"}


@functools.cache
def run_options() -> tuple[RunOption, ...]:
    """Every run option, in the order `--help` lists them within each group."""
    return options_of(RunSettings)
