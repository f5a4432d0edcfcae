"""Puts the stages in order: read → validate → group → send → report. The Python API.

    from pipeline import RunSettings, run
    summary = run(RunSettings("reassign.csv", token=token))
    print(summary.counts, summary.report_path)

The input is read twice: once to validate every row and find duplicates before anything is
sent (so `--strict` can refuse a file, and a conversation listed twice with different targets
is caught even when the rows are far apart), then again to send. Both passes stream, so memory
stays flat however large the file.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import anyio
import httpx
from anyio import CancelScope
from anyio.abc import ObjectSendStream, TaskGroup

from pipeline.client import DEFAULT_BASE_URL, TRANSPORTS, MateoClient, check_base_url
from pipeline.errors import InputError, Interrupted, MateoBulkError
from pipeline.grouping import Grouper
from pipeline.models import InvalidRow, Outcome, RowRequest, RowResult
from pipeline.pacer import Pacer
from pipeline.reader import InputFile, InputRow, open_input
from pipeline.report import OrderedReport, check_report_path
from pipeline.send import RunControl, Sender, row_results
from pipeline.validate import validate_row

_MASK_64 = (1 << 64) - 1
_MASK_32 = (1 << 32) - 1


@dataclass(frozen=True)
class RunSettings:
    """Everything a run needs; the CLI's flags map one to one onto these fields."""

    input: str | Path
    token: str = field(default="", repr=False)
    base_url: str = DEFAULT_BASE_URL
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
    transport: str = "aiohttp"
    #: How long an idle worker waits for a partial group to fill before sending it.
    max_group_wait: float = 0.5

    def check(self) -> None:
        """Raise InputError for a value no run could use."""
        if self.rate is not None and not self.rate > 0:
            raise InputError("--rate must be a positive number of requests per second")
        for name, value, low in (
            ("--concurrency", self.concurrency, 1),
            ("--max-attempts", self.max_attempts, 1),
            ("--batch-size", self.batch_size, 1),
        ):
            if value < low:
                raise InputError(f"{name} must be at least {low}")
        if self.batch_size > 100:
            # Past ~100 uuids an `in.(…)` URL nears the 8 KB that proxies accept.
            raise InputError("--batch-size must be at most 100")
        if not self.timeout > 0:
            raise InputError("--timeout must be a positive number of seconds")
        if self.transport not in TRANSPORTS:
            raise InputError(f"--transport must be one of {', '.join(TRANSPORTS)}")
        if self.report is not None:
            check_report_path(Path(self.report))
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


@dataclass(frozen=True)
class Progress:
    """A snapshot for progress displays."""

    done: int
    total: int
    counts: Mapping[Outcome, int]
    requests: int
    elapsed: float


@dataclass(frozen=True)
class RunSummary:
    """What a finished (or stopped) run did."""

    counts: Mapping[Outcome, int]
    total_rows: int
    requests: int
    retries: int
    report_path: Path
    run_dir: Path
    elapsed: float
    dry_run: bool
    differences: int = 0
    stopped: MateoBulkError | None = None
    notices: tuple[str, ...] = ()

    @property
    def exit_code(self) -> int:
        """0 all rows updated, 1 some not, 3 stopped early (resumable), 4 safety stop."""
        if self.stopped is not None:
            return self.stopped.exit_code
        good = Outcome.PLANNED if self.dry_run else Outcome.UPDATED
        if self.counts.get(good, 0) == self.total_rows and not self.differences:
            return 0
        return 1


ProgressCallback = Callable[[Progress], None]


@dataclass(frozen=True)
class _Duplicates:
    """Conversations listed more than once, found by the validation pass."""

    #: uuid (as int) -> first row, for conversations listed with different targets.
    conflicting: dict[int, int]
    #: first row -> later rows asking the same: sent once, reported on each row.
    followers_of: dict[int, list[int]]
    follower_rows: frozenset[int]


@dataclass(frozen=True)
class _Validation:
    total_rows: int
    invalid_rows: int
    first_invalid: InvalidRow | None
    duplicates: _Duplicates


def _id_key(conversation_id: str) -> int:
    return int(conversation_id.replace("-", ""), 16)


def _validate_all(input_file: InputFile, fixed: Mapping[str, str | None]) -> _Validation:
    """The first pass: count rows, find invalid ones and duplicates, keep no rows in memory."""
    # Per conversation: its first row, packed with a 64-bit hash of its change, in one int:
    # a million ids then cost ~120 MB, where a dict of records would cost several times that.
    # The hash is only compared between rows of one conversation, so a collision is moot.
    seen: dict[int, int] = {}
    conflicting: dict[int, int] = {}
    followers_of: dict[int, list[int]] = {}
    total = invalid = 0
    first_invalid: InvalidRow | None = None
    for chunk in input_file.chunks():
        total += len(chunk)
        for input_row in chunk:
            checked = validate_row(input_row, fixed)
            if isinstance(checked, InvalidRow):
                invalid += 1
                first_invalid = first_invalid or checked
                continue
            key = _id_key(checked.conversation_id)
            packed = (hash(checked.change) & _MASK_64) << 32 | checked.row
            previous = seen.setdefault(key, packed)
            if previous == packed:
                continue
            if previous >> 32 != packed >> 32:
                conflicting.setdefault(key, previous & _MASK_32)
            else:
                followers_of.setdefault(previous & _MASK_32, []).append(checked.row)
    for first_row in conflicting.values():
        # Rows of a conflicting conversation are all invalid: none is sent, none follows.
        followers_of.pop(first_row, None)
    follower_rows = frozenset(row for rows in followers_of.values() for row in rows)
    return _Validation(
        total, invalid, first_invalid, _Duplicates(conflicting, followers_of, follower_rows)
    )


def _sort_chunk(
    chunk: list[InputRow], fixed: Mapping[str, str | None], duplicates: _Duplicates
) -> tuple[list[RowResult], list[RowRequest]]:
    """The second pass over one chunk: rows to report as invalid now, and rows to send."""
    invalid: list[RowResult] = []
    to_send: list[RowRequest] = []
    for input_row in chunk:
        checked = validate_row(input_row, fixed)
        if isinstance(checked, InvalidRow):
            invalid.append(
                RowResult(
                    checked.row,
                    checked.conversation_id,
                    Outcome.INVALID,
                    error_message=checked.reason,
                )
            )
            continue
        first = duplicates.conflicting.get(_id_key(checked.conversation_id))
        if first is not None:
            invalid.append(
                RowResult(
                    checked.row,
                    checked.conversation_id,
                    Outcome.INVALID,
                    change=checked.change,
                    error_message="the conversation is listed more than once with different "
                    f"targets (first in row {first}); give each conversation one target",
                )
            )
        elif checked.row not in duplicates.follower_rows:
            to_send.append(checked)
    return invalid, to_send


def default_run_dir(input_path: str | Path) -> Path:
    stem = "stdin" if str(input_path) == "-" else Path(input_path).stem
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    candidate = Path("runs") / f"{stamp}-{stem}"
    suffix = 2
    while candidate.exists():
        candidate = Path("runs") / f"{stamp}-{stem}-{suffix}"
        suffix += 1
    return candidate


def run(
    settings: RunSettings,
    *,
    on_progress: ProgressCallback | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> RunSummary:
    """Run a bulk update to the end (or to a stop) and return its summary.

    Raises InputError (nothing sent) for a bad file, column or setting. Every other problem
    ends up in the summary: per-row outcomes in `counts` and the report, a run-wide stop
    (auth, interrupt, safety) in `stopped`.
    """
    return anyio.run(
        lambda: run_async(settings, on_progress=on_progress, transport=transport),
        backend_options={"use_uvloop": _has_uvloop()},
    )


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


async def run_async(
    settings: RunSettings,
    *,
    on_progress: ProgressCallback | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> RunSummary:
    """The same as `run`, inside a running event loop."""
    settings.check()
    started = time.monotonic()
    with open_input(
        settings.input, column_map=settings.column_map, delimiter=settings.delimiter
    ) as input_file:
        validation = await anyio.to_thread.run_sync(
            _validate_all, input_file, settings.fixed_values
        )
        if settings.strict and (validation.invalid_rows or validation.duplicates.conflicting):
            first = validation.first_invalid
            detail = f" (first: row {first.row}: {first.reason})" if first else ""
            conflicts = len(validation.duplicates.conflicting)
            if conflicts:
                detail += f"; {conflicts} conversations are listed with different targets"
            raise InputError(
                f"{validation.invalid_rows} of {validation.total_rows} rows are invalid"
                f"{detail}; nothing was sent (--strict)"
            )
        run_dir = Path(settings.run_dir) if settings.run_dir else default_run_dir(settings.input)
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_settings(run_dir, settings, input_file, validation)
        report = OrderedReport(Path(settings.report) if settings.report else run_dir / "report.csv")
        control = RunControl()
        try:
            await _pipeline(
                settings,
                input_file,
                validation,
                report,
                control,
                started,
                on_progress,
                transport,
            )
        except BaseException:
            report.abandon()
            raise
        report.close()
    return RunSummary(
        counts=dict(report.counts),
        total_rows=validation.total_rows,
        requests=control.requests,
        retries=control.retries,
        report_path=report.path,
        run_dir=run_dir,
        elapsed=time.monotonic() - started,
        dry_run=settings.dry_run,
        differences=report.differences,
        stopped=control.stop_reason,
        notices=tuple(control.notices),
    )


def _write_settings(
    run_dir: Path, settings: RunSettings, input_file: InputFile, validation: _Validation
) -> None:
    described = {
        name: (str(value) if isinstance(value, Path) else value)
        for name, value in dataclasses.asdict(settings).items()
        if name != "token"
    }
    described["input"] = str(settings.input)
    described["rows"] = validation.total_rows
    described["invalid_rows"] = validation.invalid_rows
    described["columns"] = dict(input_file.columns)
    (run_dir / "run.json").write_text(json.dumps(described, indent=2, default=str) + "\n")


async def _pipeline(
    settings: RunSettings,
    input_file: InputFile,
    validation: _Validation,
    report: OrderedReport,
    control: RunControl,
    started: float,
    on_progress: ProgressCallback | None,
    transport: httpx.AsyncBaseTransport | None,
) -> None:
    client = MateoClient(
        settings.base_url if not settings.dry_run else "http://127.0.0.1",
        settings.token,
        timeout=settings.timeout,
        max_connections=settings.concurrency,
        transport=transport,
        transport_kind=settings.transport,
    )
    try:
        async with client, anyio.create_task_group() as tasks:
            await _run_tasks(
                tasks,
                settings,
                input_file,
                validation,
                report,
                control,
                started,
                on_progress,
                client,
            )
    except BaseExceptionGroup as group:
        # A stage's own error (say, the input changed between the two passes) surfaces as is.
        errors = [error for error in group.exceptions if isinstance(error, MateoBulkError)]
        if errors:
            raise errors[0] from None
        raise
    if control.aborted:
        raise Interrupted("stopped at once by a second signal; the report was not written")


async def _run_tasks(
    tasks: TaskGroup,
    settings: RunSettings,
    input_file: InputFile,
    validation: _Validation,
    report: OrderedReport,
    control: RunControl,
    started: float,
    on_progress: ProgressCallback | None,
    client: MateoClient,
) -> None:
    duplicates = validation.duplicates
    send_rows, receive_rows = anyio.create_memory_object_stream[list[RowRequest]](2)
    send_results, receive_results = anyio.create_memory_object_stream[list[RowResult]](64)
    signals = anyio.CancelScope()
    tasks.start_soon(_watch_signals, control, signals, tasks.cancel_scope)
    tasks.start_soon(_produce, input_file, settings, duplicates, send_rows, send_results.clone())
    if settings.dry_run:
        receive_rows.close()
    else:
        grouper = Grouper(
            receive_rows, batch_size=settings.batch_size, max_wait=settings.max_group_wait
        )
        pacer = Pacer(settings.rate)
        sender = Sender(client, pacer, control, grouper, max_attempts=settings.max_attempts)
        tasks.start_soon(
            _send_all, sender, grouper, control, settings.concurrency, send_results.clone()
        )
    send_results.close()
    async with receive_results:
        async for results in receive_results:
            report.add(results)
            for result in results:
                followers = duplicates.followers_of.get(result.row)
                if followers:
                    report.add(dataclasses.replace(result, row=row) for row in followers)
            if on_progress is not None:
                on_progress(
                    Progress(
                        report.done,
                        validation.total_rows,
                        report.counts,
                        control.requests,
                        time.monotonic() - started,
                    )
                )
    signals.cancel()


async def _produce(
    input_file: InputFile,
    settings: RunSettings,
    duplicates: _Duplicates,
    send_rows: ObjectSendStream[list[RowRequest]],
    send_results: ObjectSendStream[list[RowResult]],
) -> None:
    chunks = input_file.chunks()

    def next_chunk() -> tuple[list[RowResult], list[RowRequest]] | None:
        chunk = next(chunks, None)
        return None if chunk is None else _sort_chunk(chunk, settings.fixed_values, duplicates)

    async with send_rows, send_results:
        while (sorted_chunk := await anyio.to_thread.run_sync(next_chunk)) is not None:
            invalid, to_send = sorted_chunk
            if invalid:
                await send_results.send(invalid)
            if settings.dry_run:
                await send_results.send(row_results(to_send, Outcome.PLANNED))
            elif to_send:
                await send_rows.send(to_send)


async def _send_all(
    sender: Sender,
    grouper: Grouper,
    control: RunControl,
    concurrency: int,
    send_results: ObjectSendStream[list[RowResult]],
) -> None:
    async def work() -> None:
        while not control.stopping:
            group = await grouper.next_group()
            if group is None:
                return
            if control.stopping:
                await send_results.send(row_results(group.rows, Outcome.SKIPPED))
                return
            await send_results.send(await sender.send(group))

    async with send_results:
        async with anyio.create_task_group() as workers:
            for _ in range(concurrency):
                workers.start_soon(work)
        # The run stopped early: every row not handed out yet is reported as skipped.
        await grouper.drain(lambda rows: send_results.send(row_results(rows, Outcome.SKIPPED)))


async def _watch_signals(control: RunControl, scope: CancelScope, everything: CancelScope) -> None:
    """First SIGINT/SIGTERM: stop taking rows and finish cleanly. Second: stop at once."""
    if threading.current_thread() is not threading.main_thread():
        return  # signal handlers can only be installed from the main thread
    with scope:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                if control.stopping and isinstance(control.stop_reason, Interrupted):
                    control.aborted = True
                    everything.cancel()
                    return
                name = signal.Signals(signum).name
                control.stop(Interrupted(f"stopped by {name}"))
