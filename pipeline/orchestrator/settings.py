"""What a run is asked to do: every setting, checked, and how the journal keeps them."""

from __future__ import annotations

import dataclasses
import os
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
from pipeline.stages.report import check_report_path

if TYPE_CHECKING:
    import pandas
    import pyarrow


@dataclass(frozen=True)
class RunSettings:
    """Everything a run needs; the CLI's flags map one to one onto these fields."""

    #: A .csv, .parquet, .xlsx, .xlsm, .xls or .ods file ("-": CSV from stdin), or a pandas
    #: DataFrame or pyarrow Table with the same columns (kept in the run directory as Parquet:
    #: see pipeline.stages.frames).
    input: str | Path | pandas.DataFrame | pyarrow.Table
    token: str = field(default="", repr=False)
    #: MATEO_BASE_URL when set (as on the command line), else Mateo's own: a script pointed at
    #: the sandbox by the variable must not talk to production.
    base_url: str = field(
        default_factory=lambda: os.environ.get(BASE_URL_VARIABLE) or DEFAULT_BASE_URL
    )
    column_map: Mapping[str, str] = field(default_factory=dict)
    #: Values set for every row (`--set`), already parsed: None means JSON null.
    fixed_values: Mapping[str, str | None] = field(default_factory=dict)
    #: Requests per second; None for no limit (the sandbox, benchmarks).
    rate: float | None = 2.0
    concurrency: int = 4
    max_attempts: int = 5
    timeout: float = 10.0
    batch_size: int = 50
    strict: bool = False
    dry_run: bool = False
    run_dir: Path | None = None
    report: Path | None = None
    delimiter: str | None = None
    #: A workbook's sheet (.xlsx, .xlsm, .xls, .ods): its name, or its number counted from 1;
    #: None for the first. Kept with the run, so `resume` reads the same sheet.
    sheet: str | int | None = None
    transport: str = "aiohttp"
    #: How long an idle worker waits for a partial group to fill before sending it.
    max_group_wait: float = 0.5
    #: The account's requests per API day, shared by every run on this machine.
    daily_quota: int = DEFAULT_DAILY_QUOTA
    #: The most requests this run may send; None for no limit of its own.
    max_requests: int | None = None
    #: When the API's day starts, HH:MM in UTC.
    quota_reset_utc: str = "00:00"
    #: A 429 asking to wait longer than this stops the run (resumable), unless `wait`.
    max_wait: float = 60.0
    #: Sleep until the budget resets instead of stopping.
    wait: bool = False
    #: Read each row's current values first: rows already in their target state cost no PATCH,
    #: each PATCH is guarded by the values read, and the run can write an undo file.
    snapshot: bool = True
    #: Guard each PATCH with the values it was planned from (and expect_* columns).
    guarded: bool = True
    #: Stop after the snapshot: write the plan, change nothing (`mateo-bulk plan`).
    plan_only: bool = False
    #: PostgREST filters every PATCH also carries, e.g. {"status": "eq.open"}: a row that no
    #: longer matches them is left alone and reported `conflict` (a job's query uses this).
    guard: Mapping[str, str] = field(default_factory=dict)
    #: The most rows the run may change (`--max-changes`): more, and nothing is sent. Counted
    #: before the snapshot, so rows already at their target count too. None: no limit.
    max_changes: int | None = None
    #: The input (or a job's query) must yield exactly this many rows (`--expect-rows`).
    expect_rows: int | None = None
    #: The ledger's clock (tests pass a fake one to cross midnight); not a journaled setting.
    quota_clock: Callable[[], datetime] | None = field(default=None, repr=False, compare=False)

    def check(self) -> None:
        """Raise InputError for a value no run could use."""
        if self.rate is not None and not self.rate > 0:
            raise InputError("--rate must be a positive number of requests per second")
        for name, value in (
            ("--concurrency", self.concurrency),
            ("--max-attempts", self.max_attempts),
            ("--batch-size", self.batch_size),
        ):
            if value < 1:
                raise InputError(f"{name} must be at least 1")
        if self.batch_size > 100:
            # Past ~100 uuids an `in.(…)` URL nears the 8 KB that proxies accept.
            raise InputError("--batch-size must be at most 100")
        if not self.timeout > 0:
            raise InputError("--timeout must be a positive number of seconds")
        if self.transport not in TRANSPORTS:
            raise InputError(f"--transport must be one of {', '.join(TRANSPORTS)}")
        if self.report is not None:
            check_report_path(Path(self.report))
        if self.daily_quota < 1:
            raise InputError("--daily-quota must be at least 1")
        if self.max_requests is not None and self.max_requests < 1:
            raise InputError("--max-requests must be at least 1")
        for name, count in (
            ("--max-changes", self.max_changes),
            ("--expect-rows", self.expect_rows),
        ):
            if count is not None and count < 0:
                raise InputError(f"{name} must be 0 or more rows")
        if not self.max_wait >= 0:
            raise InputError("--max-wait must be 0 or more seconds")
        parse_reset_time(self.quota_reset_utc)
        try:
            Guard.of(self.guard)
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
        values["guard"] = dict(self.guard)
        return values

    @classmethod
    def from_meta(cls, values: Mapping[str, Any], token: str) -> RunSettings:
        paths = {"run_dir", "report"}
        known = {spec.name for spec in dataclasses.fields(cls)}
        arguments: dict[str, Any] = {
            name: (Path(value) if name in paths and value is not None else value)
            for name, value in values.items()
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
