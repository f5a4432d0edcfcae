"""How export and verify reach the API: their settings, and the one request path their GETs
take (a job's query reads its ids on it too)."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime

import httpx

from pipeline.api.client import BASE_URL_VARIABLE, DEFAULT_BASE_URL, MateoClient
from pipeline.api.quota import DEFAULT_DAILY_QUOTA, QuotaLedger
from pipeline.api.request_path import RequestPath, RunControl
from pipeline.core.errors import InputError
from pipeline.orchestrator.settings import RunSettings

#: Called after each page with (rows so far, requests so far).
ProgressCallback = Callable[[int, int], None]


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


@asynccontextmanager
async def open_request_path(
    settings: ReadSettings | RunSettings,
    control: RunControl,
    transport: httpx.AsyncBaseTransport | None,
) -> AsyncIterator[RequestPath]:
    """The one request path over a client for `settings`, drawing on the account's ledger: the
    GETs of export and verify (ReadSettings) and of a job's query (its run's RunSettings)."""
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
