"""Puts the stages in order — prepare → group → send → journal → report — and is the Python API.

from pipeline.orchestrator.runner import RunSettings, run, resume
summary = run(RunSettings("reassign.csv", token=token))
print(summary.counts, summary.report_path)
# stopped (exit_code 3)? later:
summary = resume(summary.run_dir, token=token)
"""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx
from anyio import CancelScope
from anyio.abc import ObjectSendStream, TaskGroup
from anyio.streams.memory import MemoryObjectReceiveStream

from pipeline.api.account import account_fingerprint, load_answers
from pipeline.api.client import MateoClient
from pipeline.api.quota import Budget, QuotaLedger
from pipeline.api.request_path import RequestPath, RunControl
from pipeline.core.errors import InputError, Interrupted, MateoBulkError, RunStopped
from pipeline.core.models import Guard, Outcome, RowRequest, RowResult
from pipeline.orchestrator.settings import RunSettings
from pipeline.stages.frames import (
    FRAME_STEM,
    PLAN_FRAME_NAME,
    is_frame,
    report_frame,
    save_frame,
    save_plan_frame,
)
from pipeline.stages.grouping import Grouper
from pipeline.stages.html_report import HTML_SUFFIX, write_html_report
from pipeline.stages.input.input_file import InputFile
from pipeline.stages.input.opening import open_input
from pipeline.stages.journal import Journal
from pipeline.stages.outcomes import skipped
from pipeline.stages.prepare import Validation, dry_run_columns, sort_batch, validate_file
from pipeline.stages.report import (
    InputCells,
    ReportWriter,
    check_report_path,
    write_report_batches,
)
from pipeline.stages.report_columns import unsent_batch
from pipeline.stages.send import Sender, row_results
from pipeline.stages.side_files import (
    FAILING_OUTCOMES,
    plan_to_input,
    write_failures,
    write_plan,
    write_undo,
)
from pipeline.stages.snapshot import guard_expected, snapshot_rows

if TYPE_CHECKING:
    import pandas
    import pyarrow


@dataclass(frozen=True)
class Progress:
    """A snapshot for progress displays."""

    done: int
    total: int
    counts: Mapping[Outcome, int]
    requests: int
    elapsed: float
    rate: float | None = None
    #: Requests left in the account's budget today (None on a dry run).
    budget_left: int | None = None
    #: What the run is doing: "checking rows" (a dry run), "reading current values" (a plan),
    #: "sending", "waiting until HH:MM:SS UTC" (see `waiting_until`) or "stopping".
    phase: str = ""
    #: The end of a long wait for the API (UTC), and why; None when the run is not waiting.
    waiting_until: datetime | None = None
    waiting_reason: str | None = None
    #: What the run has to say so far (a column it does not read, a wait, an API's habit):
    #: displays show each once as it comes; the summary repeats them.
    notices: tuple[str, ...] = ()


@dataclass(frozen=True)
class RunSummary:
    """What a finished (or stopped) run did, over all its sessions."""

    counts: Mapping[Outcome, int]
    total_rows: int
    requests: int
    retries: int
    report_path: Path | None
    run_dir: Path
    elapsed: float
    dry_run: bool
    differences: int = 0
    stopped: MateoBulkError | None = None
    notices: tuple[str, ...] = ()
    failures_path: Path | None = None
    #: Requests the run costs if every group fills (the dry run's request plan): PATCHes,
    #: and the snapshot's GETs among them (`estimated_reads`).
    estimated_requests: int = 0
    estimated_reads: int = 0
    #: The account's requests per API day: a plan past it spans several days.
    daily_quota: int = 0
    budget: Budget | None = None
    #: The --rate the run was given (None: unlimited).
    rate: float | None = None
    #: `plan`: the plan file and its transitions ("field: before -> after": rows).
    plan_path: Path | None = None
    transitions: Mapping[str, int] = field(default_factory=dict)
    #: PATCHes applying the plan costs (groups of one change and one before).
    apply_requests: int = 0
    #: The undo file: `mateo-bulk run` it to put the updated rows back.
    undo_path: Path | None = None
    #: Requests the API refused with 429 (too many), this session.
    rate_limited: int = 0

    def report_frame(self) -> pandas.DataFrame:
        """The report as a pandas DataFrame, with the report's types (see
        `pipeline.stages.frames.report_frame`). Needs pandas: `pip install 'mateo-bulk[frames]'`."""
        return report_frame(self.run_dir, self.report_path)

    @property
    def exit_code(self) -> int:
        """0 all rows updated, 1 some not, 3 stopped early (resumable), 4 safety stop."""
        if self.stopped is not None:
            return self.stopped.exit_code
        good = Outcome.PLANNED if self.dry_run or self.plan_path else Outcome.UPDATED
        done = self.counts.get(good, 0) + self.counts.get(Outcome.UNCHANGED, 0)
        if done == self.total_rows and not self.differences:
            return 0
        return 1


ProgressCallback = Callable[[Progress], None]


def default_run_dir(input_path: str | Path) -> Path:
    stem = "stdin" if str(input_path) == "-" else Path(input_path).stem
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    candidate = Path("runs") / f"{stamp}-{stem}"
    suffix = 2
    while candidate.exists():
        candidate = Path("runs") / f"{stamp}-{stem}-{suffix}"
        suffix += 1
    return candidate


#: Asked, once the input is validated and before anything is sent, whether to go on with this
#: many conversations to change (at most: rows already at their target are skipped); False
#: refuses the run (InputError, nothing sent). Not asked on a dry run or a plan.
Confirm = Callable[[int], bool]


def run(
    settings: RunSettings,
    *,
    on_progress: ProgressCallback | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    confirm: Confirm | None = None,
) -> RunSummary:
    """Run a bulk update to the end (or to a stop) and return its summary.

    Raises InputError (nothing sent) for a bad file, column or setting, counts off
    `max_changes` or `expect_rows`, or a `confirm` that said no. Every other problem
    ends up in the summary: per-row outcomes in `counts` and the report, a run-wide stop
    (auth, interrupt, safety) in `stopped`.
    """
    return _run_in_loop(
        run_async(settings, on_progress=on_progress, transport=transport, confirm=confirm)
    )


def plan(
    settings: RunSettings,
    *,
    on_progress: ProgressCallback | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> RunSummary:
    """Read every row and write the plan (`plan.csv`: before, after, decision); change nothing.

    `apply_plan` then sends exactly the `change` rows, each guarded by its before-values.
    """
    return _run_in_loop(plan_async(settings, on_progress=on_progress, transport=transport))


async def plan_async(
    settings: RunSettings,
    *,
    on_progress: ProgressCallback | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> RunSummary:
    """The same as `plan`, inside a running event loop."""
    return await run_async(
        dataclasses.replace(settings, plan_only=True), on_progress=on_progress, transport=transport
    )


#: Settings a resume may change: how the rest is sent, never what a row means.
RESUME_OVERRIDES = ("base_url", "rate", "concurrency", "max_requests", "max_wait", "wait")


def resume(
    run_dir: str | Path,
    *,
    token: str,
    retry_failed: bool = False,
    report: Path | None = None,
    on_progress: ProgressCallback | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    quota_clock: Callable[[], datetime] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> RunSummary:
    """Continue a stopped run: rows with a final outcome are not sent again.

    `overrides` changes how the rest is sent (any of RESUME_OVERRIDES, e.g. {"rate": 1.0,
    "wait": False}); the journal records them. Raises InputError if the input file changed
    since the run started.
    """
    return _run_in_loop(
        resume_async(
            run_dir,
            token=token,
            retry_failed=retry_failed,
            report=report,
            on_progress=on_progress,
            transport=transport,
            quota_clock=quota_clock,
            overrides=overrides,
        )
    )


def refuse_running_loop(function: str) -> None:
    """Raise a RuntimeError that names `function`'s async twin when an event loop is running in
    this thread (Jupyter, an async application).

    A sync function cannot wait there: it would have to block the loop it runs on, and anyio's
    own refusal ("Already running asyncio in this thread") does not say what to do instead.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(
        f"pipeline.{function}() cannot run inside a running event loop (Jupyter, an async "
        f"application): use `await pipeline.{function}_async(...)` there, with the same arguments"
    )


def _run_in_loop(coroutine: Any) -> RunSummary:
    try:
        refuse_running_loop(coroutine.__name__.removesuffix("_async"))
    except RuntimeError:
        coroutine.close()  # never started: no "coroutine was never awaited" warning
        raise

    async def main() -> RunSummary:
        return await coroutine  # type: ignore[no-any-return]

    try:
        import uvloop  # noqa: F401

        options = {"use_uvloop": True}
    except ImportError:
        options = {}
    return anyio.run(main, backend_options=options)


async def run_async(
    settings: RunSettings,
    *,
    on_progress: ProgressCallback | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    confirm: Confirm | None = None,
) -> RunSummary:
    """The same as `run`, inside a running event loop."""
    settings.check()
    frame = is_frame(settings.input)
    named = FRAME_STEM if frame else settings.input
    run_dir = Path(settings.run_dir) if settings.run_dir else default_run_dir(named)
    settings = dataclasses.replace(settings, run_dir=run_dir)
    if (run_dir / "journal.sqlite").exists():
        Journal.create(run_dir, {})  # raises the "already holds a run" error
    made_run_dir = not run_dir.exists()
    try:
        if frame:
            # Kept in the run directory as Parquet, read from there as any Parquet input, so
            # that the run can be resumed once the frame is gone with its process.
            kept = await anyio.to_thread.run_sync(
                save_frame, settings.input, run_dir, settings.column_map
            )
            settings = dataclasses.replace(settings, input=kept)
        elif str(settings.input) == "-":
            # Kept in the run directory so that the run can be resumed.
            run_dir.mkdir(parents=True, exist_ok=True)
            with (run_dir / "stdin.csv").open("wb") as copy:
                shutil.copyfileobj(sys.stdin.buffer, copy)
            settings = dataclasses.replace(settings, input=run_dir / "stdin.csv")
        input_file = open_input(
            settings.input,
            column_map=settings.column_map,
            delimiter=settings.delimiter,
            sheet=settings.sheet,
        )
        with input_file:
            version = input_file.version()
            validation = await anyio.to_thread.run_sync(
                validate_file, input_file, settings.fixed_values
            )
            problem = validation.problem()
            refusal = None
            if settings.strict and problem:
                # Nothing is sent; the rows are reported as a dry run reports them, so that the
                # report and the fix-and-rerun file hold every invalid row and why.
                refusal = f"{problem}; nothing was sent (--strict)"
                settings = dataclasses.replace(settings, dry_run=True)
            # Only a new run is held to the counts: a resume goes on with one already accepted.
            settings.check_row_counts(validation.total_rows, validation.conversations)
            fingerprint = await anyio.to_thread.run_sync(input_file.fingerprint)
            if input_file.version() != version:
                raise InputError(f"{settings.input} changed while it was validated; try again")
            sends = not settings.dry_run and not settings.plan_only
            if confirm is not None and sends and not confirm(validation.conversations):
                raise InputError("not confirmed; nothing was sent")
            meta = {
                "settings": settings.to_meta(),
                "input": str(Path(settings.input).resolve()),
                # A copy kept in the run directory (stdin, a plan's rows) moves with it.
                "input_in_run_dir": _relative_to(Path(settings.input), run_dir),
                "input_format": input_file.format,
                "fingerprint": str(fingerprint),
                "rows": validation.total_rows,
                "state": "running",
                "started_at": _now(),
            }
            with Journal.create(run_dir, meta) as journal:
                summary = await _execute(
                    settings,
                    journal,
                    input_file,
                    validation,
                    retry_failed=False,
                    on_progress=on_progress,
                    transport=transport,
                )
                if refusal is not None:
                    listed = _invalid_rows(journal, summary, input_file.describe_row)
                    summary = dataclasses.replace(summary, stopped=InputError(refusal + listed))
                return summary
    except InputError:
        if made_run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


async def resume_async(
    run_dir: str | Path,
    *,
    token: str,
    retry_failed: bool = False,
    report: Path | None = None,
    on_progress: ProgressCallback | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    quota_clock: Callable[[], datetime] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> RunSummary:
    """The same as `resume`, inside a running event loop."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(RESUME_OVERRIDES))
    if unknown:
        raise InputError(
            f"resume cannot change {', '.join(unknown)}: only {', '.join(RESUME_OVERRIDES)}"
        )
    with Journal.open(Path(run_dir)) as journal:
        journal.lock()
        meta = journal.meta()
        if meta.get("account") and token and account_fingerprint(token) != meta["account"]:
            raise InputError(
                f"the API token is not the one {run_dir} was started with (another account?): "
                "resume with the same token, or start a new run"
            )
        settings = RunSettings.from_meta(meta["settings"], token)
        moved_input = meta.get("input_in_run_dir")
        settings = dataclasses.replace(
            settings,
            input=Path(run_dir) / moved_input if moved_input else meta["input"],
            run_dir=Path(run_dir),
            quota_clock=quota_clock,
        )
        if report is not None:
            settings = dataclasses.replace(settings, report=report)
        settings = dataclasses.replace(settings, **overrides)
        if settings.dry_run:
            raise InputError(f"{run_dir} was a dry run: start a real one with `mateo-bulk run`")
        settings.check()
        input_file = open_input(
            settings.input,
            column_map=settings.column_map,
            delimiter=settings.delimiter,
            sheet=settings.sheet,
        )
        with input_file:
            fingerprint = await anyio.to_thread.run_sync(input_file.fingerprint)
            if str(fingerprint) != meta["fingerprint"]:
                raise InputError(
                    f"{settings.input} has changed since the run started, so the journal's row "
                    "numbers no longer match it; restore the original file or start a new run"
                )
            validation = await anyio.to_thread.run_sync(
                validate_file, input_file, settings.fixed_values
            )
            # The stored settings stay the run's own; what this session changed is kept apart.
            journal.set_meta(
                {"state": "running", "resumed_at": _now(), "resume_overrides": overrides}
            )
            return await _execute(
                settings,
                journal,
                input_file,
                validation,
                retry_failed=retry_failed,
                on_progress=on_progress,
                transport=transport,
            )


def _relative_to(path: Path, directory: Path) -> str | None:
    try:
        return str(path.resolve().relative_to(directory.resolve()))
    except ValueError:
        return None


#: Invalid rows a --strict refusal names; the report and the fix-and-rerun file hold them all.
_INVALID_ROWS_LISTED = 100


def _invalid_rows(
    journal: Journal, summary: RunSummary, describe_row: Callable[[int], str]
) -> str:
    """The invalid rows, a line each, for the message of a --strict refusal."""
    lines: list[str] = []
    for result in journal.results([Outcome.INVALID]):
        if len(lines) == _INVALID_ROWS_LISTED:
            left = summary.counts.get(Outcome.INVALID, 0) - len(lines)
            lines.append(f"  … and {left:,} more")
            break
        lines.append(f"  {describe_row(result.row)}: {result.error_message}")
    where = summary.failures_path or summary.report_path
    return (
        ":\n"
        + "\n".join(lines)
        + (f"\n  (all of them, with their cells: {where})" if where else "")
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class _Run:
    """One session of a run: what every stage shares."""

    settings: RunSettings
    journal: Journal
    input_file: InputFile
    validation: Validation
    retry_failed: bool
    on_progress: ProgressCallback | None
    ledger: QuotaLedger | None
    control: RunControl = field(default_factory=RunControl)
    started: float = field(default_factory=time.monotonic)
    #: The report, when a dry run wrote it as it went (see _dry_run).
    report_written: Path | None = None
    #: Rows whose results this session committed (duplicates' followers included).
    recorded: int = 0
    #: The counts of the last timeline event written: an idle second writes none.
    _last_event: tuple[int, ...] = ()
    #: The last progress shown, and the wait it showed: a wait that starts while no result
    #: comes in is shown again (see `_record_timeline`).
    _last_progress: Progress | None = None

    def show_progress(self, done: int, counts: Mapping[Outcome, int], rate: float | None) -> None:
        """Hand the progress so far to the display, with the phase the run is in."""
        if self.on_progress is None:
            return
        settings, control = self.settings, self.control
        budget_left = None
        if self.ledger is not None and not settings.dry_run:
            budget_left = self.ledger.budget().left
        # Nothing is waited for once every row is done.
        until = control.wait_ends() if done < self.validation.total_rows else None
        if control.stopping:
            phase = "stopping"
        elif until is not None:
            phase = f"waiting until {until:%H:%M:%S} UTC"
        elif settings.dry_run:
            phase = "checking rows"
        elif settings.plan_only:
            phase = "reading current values"
        else:
            phase = "sending"
        progress = Progress(
            done,
            self.validation.total_rows,
            dict(counts),
            control.requests,
            time.monotonic() - self.started,
            rate,
            budget_left,
            phase,
            until,
            control.waiting_reason if until is not None else None,
            tuple(control.notices),
        )
        self._last_progress = progress
        self.on_progress(progress)

    def show_wait(self) -> None:
        """A long wait that started (or ended) since the last progress: shown now, not at
        the next result, which may be hours away."""
        last = self._last_progress
        if last is None:
            return
        until = self.control.wait_ends()
        if until != last.waiting_until or len(self.control.notices) != len(last.notices):
            self.show_progress(last.done, last.counts, last.rate)

    def record_event(self, kind: str, detail: str | None = None) -> None:
        """A point of the run's timeline, with this session's counts so far."""
        control = self.control
        counts = (control.requests, control.retries, control.rate_limited, self.recorded)
        if kind == "progress" and counts == self._last_event:
            return
        self._last_event = counts
        requests, retries, rate_limited, rows = counts
        self.journal.record_event(
            kind,
            requests=requests,
            retries=retries,
            rate_limited=rate_limited,
            rows=rows,
            detail=detail,
        )


async def _execute(
    settings: RunSettings,
    journal: Journal,
    input_file: InputFile,
    validation: Validation,
    *,
    retry_failed: bool,
    on_progress: ProgressCallback | None,
    transport: httpx.AsyncBaseTransport | None,
) -> RunSummary:
    settings, learned = _apply_doctor_answers(settings)
    assert settings.run_dir is not None
    ledger = settings.ledger()
    session = _Run(settings, journal, input_file, validation, retry_failed, on_progress, ledger)
    control = session.control
    if learned:
        control.notice(learned)
    for warning in input_file.warnings:
        control.notice(warning)
    # resume_async marks the journal resumed before it gets here; a new run's never is.
    session.record_event("resume" if journal.meta().get("resumed_at") else "start")
    try:
        await _pipeline(session, transport)
    except BaseException as error:
        reason = error if isinstance(error, MateoBulkError) else Interrupted("stopped at once")
        journal.set_meta({"state": "stopped", "stop_reason": str(reason), "stopped_at": _now()})
        session.record_event("stop", str(reason))
        raise
    finally:
        budget = ledger.budget() if ledger else None
        if ledger:
            ledger.close()
    if control.aborted:
        control.stop_reason = Interrupted(
            "stopped at once by a second signal; the journal keeps every confirmed row, "
            "the report was not written"
        )
    stopped = control.stop_reason
    if control.token_accepted:
        # Which account the run changes (a fingerprint, never the token), once the API has
        # accepted the token: a run stopped by a wrong token may be resumed with the right one.
        journal.set_meta({"account": account_fingerprint(settings.token)})
    # A dry run changed nothing: no row to look through for what the API did.
    unasked, example = (0, None) if settings.dry_run else journal.unasked_changes()
    if unasked:
        control.notice(
            f"{unasked:,} updated rows changed a field the run did not ask to change (e.g. "
            f"{example}); the API or a proxy set it. The undo file restores those fields too"
        )
    journal.set_meta(
        {"state": "stopped", "stop_reason": str(stopped), "stopped_at": _now()}
        if stopped
        else {"state": "finished", "finished_at": _now()}
    )
    session.record_event("stop" if stopped else "finish", str(stopped) if stopped else None)
    report_path: Path | None = None
    failures_path = None
    if not control.aborted:
        report_path = _report_path(settings)
        if session.report_written != report_path:
            carried = InputCells.carried(input_file)
            write_report_batches(journal.result_batches(), report_path, carried)
    plan_path = undo_path = None
    transitions: dict[str, int] = {}
    apply_requests = 0
    suffix = ".parquet" if input_file.format == "parquet" else ".csv"
    if report_path and settings.plan_only:
        plan_path = settings.run_dir / "plan.csv"
        transitions, group_sizes = write_plan(journal.results(), plan_path)
        apply_requests = sum(-(-size // settings.batch_size) for size in group_sizes)
    elif report_path and not settings.dry_run:
        undo_path = settings.run_dir / f"undo{suffix}"
        undoable = journal.results([Outcome.UPDATED, Outcome.SKIPPED, Outcome.FAILED])
        if not write_undo(undoable, undo_path):
            undo_path = None
    failing = journal.rows_with(FAILING_OUTCOMES) if report_path else set()
    if report_path and failing:
        failures_path = report_path.with_name(f"{report_path.stem}-failures{suffix}")
        write_failures(journal.results(FAILING_OUTCOMES), failures_path, input_file, failing)
    if report_path:
        try:
            write_html_report(
                journal,
                settings.run_dir / "report.html",
                report_path=report_path,
                undo_path=undo_path,
                failures_path=failures_path,
            )
        except (OSError, sqlite3.Error, ValueError) as error:
            # The page only presents what the journal and report hold: a run whose rows are
            # all accounted for does not fail for it. `mateo-bulk report` can write it later.
            control.notice(f"report.html could not be written ({error}); the report is complete")
    reads = validation.estimated_reads() if settings.snapshot else 0
    return RunSummary(
        counts=journal.counts(),
        total_rows=validation.total_rows,
        requests=control.requests,
        retries=control.retries,
        rate_limited=control.rate_limited,
        report_path=report_path,
        run_dir=settings.run_dir,
        elapsed=time.monotonic() - session.started,
        dry_run=settings.dry_run,
        differences=0 if settings.dry_run else journal.differences(),
        stopped=stopped,
        notices=tuple(control.notices),
        failures_path=failures_path,
        estimated_requests=validation.estimated_requests(settings.batch_size) + reads,
        estimated_reads=reads,
        daily_quota=settings.daily_quota,
        budget=budget,
        rate=settings.rate,
        plan_path=plan_path,
        transitions=transitions,
        apply_requests=apply_requests,
        undo_path=undo_path,
    )


def _report_path(settings: RunSettings) -> Path:
    assert settings.run_dir is not None
    return Path(settings.report) if settings.report else settings.run_dir / "report.csv"


def _apply_doctor_answers(settings: RunSettings) -> tuple[RunSettings, str | None]:
    """Start at the batch size `mateo-bulk doctor` found this account's API accepts.

    Without stored answers the run starts at --batch-size and degrades when refused (414,
    406, 400 on the filter); with them, it need not spend requests finding out.
    """
    if not settings.token or settings.dry_run:
        return settings, None
    document = load_answers(settings.token, settings.base_url) or {}
    recommended = (document.get("answers") or {}).get("recommended_batch_size")
    if isinstance(recommended, int) and 1 <= recommended < settings.batch_size:
        note = (
            f"batch size {recommended} (not {settings.batch_size}): what `mateo-bulk doctor` "
            f"found this API accepts on {document.get('checked_at', '?')}"
        )
        return dataclasses.replace(settings, batch_size=recommended), note
    return settings, None


async def _pipeline(session: _Run, transport: httpx.AsyncBaseTransport | None) -> None:
    settings = session.settings
    try:
        if settings.dry_run:
            # Sends nothing, so no client: its transport and TLS context cost a quarter second.
            async with anyio.create_task_group() as tasks:
                await _run_dry(tasks, session)
            return
        client = MateoClient(
            settings.base_url,
            settings.token,
            timeout=settings.timeout,
            max_connections=settings.concurrency,
            transport=transport,
            transport_kind=settings.transport,
        )
        async with client, anyio.create_task_group() as tasks:
            await _run_tasks(tasks, session, client)
    except BaseExceptionGroup as group:
        # A stage's own error (say, the input changed between the two passes) surfaces as is.
        errors = [error for error in group.exceptions if isinstance(error, MateoBulkError)]
        if errors:
            raise errors[0] from None
        raise


async def _run_dry(tasks: TaskGroup, session: _Run) -> None:
    signals = anyio.CancelScope()
    tasks.start_soon(_watch_signals, session.control, signals, tasks.cancel_scope)
    await _dry_run(session)
    signals.cancel()


async def _run_tasks(tasks: TaskGroup, session: _Run, client: MateoClient) -> None:
    settings, control, journal = session.settings, session.control, session.journal
    send_rows, receive_rows = anyio.create_memory_object_stream[list[RowRequest]](2)
    send_results, receive_results = anyio.create_memory_object_stream[list[RowResult]](16)
    signals = anyio.CancelScope()
    tasks.start_soon(_watch_signals, control, signals, tasks.cancel_scope)
    timeline = anyio.CancelScope()
    tasks.start_soon(_record_timeline, session, timeline)
    tasks.start_soon(_produce, session, send_rows, send_results.clone())
    path = RequestPath(
        client,
        control,
        rate=settings.rate,
        max_attempts=settings.max_attempts,
        ledger=None if settings.dry_run else session.ledger,
        max_wait=settings.max_wait,
        wait_for_reset=settings.wait,
    )
    pacer = path.pacer
    if settings.dry_run:
        receive_rows.close()
    else:
        to_group = receive_rows
        if settings.snapshot:
            send_checked, to_group = anyio.create_memory_object_stream[list[RowRequest]](2)
        # At a low rate a request slot is worth waiting for: a row may wait as long as a full
        # group takes to be sent (25 s at 2 requests/s), so that slow input still groups.
        max_wait = settings.max_group_wait
        if settings.rate:
            max_wait = max(max_wait, settings.batch_size / settings.rate)
        grouper = Grouper(to_group, batch_size=settings.batch_size, max_wait=max_wait)
        sender = Sender(
            path, grouper, guard=Guard.of(settings.guard), write_ahead=journal.record_intents
        )
        if settings.snapshot:
            tasks.start_soon(
                partial(
                    snapshot_rows,
                    path,
                    control,
                    receive_rows,
                    send_checked,
                    send_results.clone(),
                    concurrency=settings.concurrency,
                    guarded=settings.guarded,
                    plan_only=settings.plan_only,
                    api_sets=journal.fields_the_api_set(),
                )
            )
        tasks.start_soon(
            _send_all, sender, grouper, control, settings.concurrency, send_results.clone()
        )
    send_results.close()
    counts = journal.counts()
    done = sum(counts[outcome] for outcome in Outcome if outcome is not Outcome.SKIPPED)
    counts[Outcome.SKIPPED] = 0  # skipped rows of an earlier session are to be sent now
    # Shown before the first request: what the input's check has to say comes before sending.
    session.show_progress(done, counts, pacer.rate)
    followers_of = session.validation.duplicates.followers_of
    async with receive_results:
        async for results in _batched(receive_results):
            results += [
                dataclasses.replace(result, row=row)
                for result in results
                for row in followers_of.get(result.row, ())
            ]
            # Durable first: a row counts as done only once its result is committed.
            journal.record(results)
            for result in results:
                counts[result.outcome] += 1
            done += len(results)
            session.recorded += len(results)
            session.show_progress(done, counts, pacer.rate)
    signals.cancel()
    timeline.cancel()


#: How often the run's timeline gets a point (when anything changed): fine enough to show
#: requests per interval and when 429s came, one small insert a second at most.
_TIMELINE_INTERVAL = 1.0


async def _record_timeline(session: _Run, scope: CancelScope) -> None:
    with scope:
        while True:
            await anyio.sleep(_TIMELINE_INTERVAL)
            session.record_event("progress")
            session.show_wait()


#: Results are committed to the journal at most this often (and at once when the run ends),
#: so that at hundreds of requests a second a commit covers many rows, not one. A row applied
#: but not yet committed when the process dies is read again on resume and found `unchanged`.
_COMMIT_INTERVAL = 0.05
_COMMIT_ROWS = 5_000


async def _batched(stream: MemoryObjectReceiveStream[list[RowResult]]) -> Any:
    """Batches of results for one journal commit each: what arrives within a short window."""
    pending: list[RowResult] = []
    window_ends = float("inf")
    while True:
        try:
            with anyio.fail_after(max(0.0, window_ends - anyio.current_time())):
                results = await stream.receive()
        except TimeoutError:
            results = []
        except anyio.EndOfStream:
            break
        if not pending:
            window_ends = anyio.current_time() + _COMMIT_INTERVAL
        pending += results
        if anyio.current_time() >= window_ends or len(pending) >= _COMMIT_ROWS:
            yield pending
            pending, window_ends = [], float("inf")
    if pending:
        yield pending


async def _produce(
    session: _Run,
    send_rows: ObjectSendStream[list[RowRequest]],
    send_results: ObjectSendStream[list[RowResult]],
) -> None:
    settings = session.settings
    assert session.validation.spool is not None
    # The rows as validated, spooled by the first pass: read, not parsed and checked again.
    chunks = session.validation.spool.batches()
    version = session.input_file.version()

    def next_chunk() -> tuple[list[RowResult], list[RowRequest]] | None:
        chunk = next(chunks, None)
        if chunk is None:
            return None
        if _stopped_for_a_changed_input(session, version):
            return None
        rows = chunk.column("row")
        first, last = rows[0].as_py(), rows[-1].as_py()
        done = session.journal.done_rows(first, last, retry_failed=session.retry_failed)
        invalid, to_send = sort_batch(chunk, session.validation.duplicates, done)
        intents = session.journal.open_intents(first, last)
        if intents:
            # Sent by an earlier session that never learned the answer: they may have been
            # applied, and their before-values are the ones read before that first attempt.
            to_send = [
                dataclasses.replace(row, maybe_applied=True, before=intents[row.row] or row.before)
                if row.row in intents
                else row
                for row in to_send
            ]
        return invalid, to_send

    async with send_rows, send_results:
        while (sorted_chunk := await anyio.to_thread.run_sync(next_chunk)) is not None:
            invalid, to_send = sorted_chunk
            if invalid:
                await send_results.send(invalid)
            if settings.dry_run:
                await send_results.send(row_results(to_send, Outcome.PLANNED))
            elif to_send:
                if not settings.snapshot:
                    to_send = [guard_expected(row, settings.guarded) for row in to_send]
                await send_rows.send(to_send)


def _stopped_for_a_changed_input(session: _Run, version: tuple[int, int, int]) -> bool:
    """Stop the run if its input was rewritten since it was validated: its rows would no
    longer be the ones validated (and journaled by number)."""
    if session.input_file.version() == version:
        return False
    session.control.stop(
        RunStopped(
            f"{session.settings.input} was changed during the run; its rows are no longer the "
            "ones validated. Restore the file and resume, or start a new run"
        )
    )
    return True


async def _dry_run(session: _Run) -> None:
    """A dry run sends nothing, so each row is `planned` or `invalid` as the first pass found:
    the spooled batches go to the journal in columns, a transaction per batch (no record
    object per row) on a thread of their own, and to the report as they go (not read back
    from the journal after), with the same progress as a real run."""
    settings, journal, validation = session.settings, session.journal, session.validation
    assert validation.spool is not None
    batches = validation.spool.batches()
    version = session.input_file.version()
    counts = dict.fromkeys(Outcome, 0)
    report_path = _report_path(settings)
    writer = journal.columns_writer()

    def record_next(report: ReportWriter) -> dict[str, int] | None:
        checked = next(batches, None)
        if checked is None:
            return None
        # The spool holds the rows as validated, but a report of them would describe a file
        # that is no longer there: the user is told, as a real run tells them.
        if _stopped_for_a_changed_input(session, version):
            return None
        columns = dry_run_columns(checked, validation.duplicates)
        writer.record(columns)
        report.write(unsent_batch(columns))
        tally = columns["outcome"].value_counts().to_pylist()
        return {entry["values"]: entry["counts"] for entry in tally}

    try:
        with ReportWriter(report_path, InputCells.carried(session.input_file)) as report:
            await _record_dry_run(session, partial(record_next, report), counts)
            # The report is complete once the journal holds every row it shows.
            await anyio.to_thread.run_sync(writer.close)
    finally:
        writer.close()
    session.report_written = report_path


async def _record_dry_run(
    session: _Run, record_next: Callable[[], dict[str, int] | None], counts: dict[Outcome, int]
) -> None:
    done = 0
    while (recorded := await anyio.to_thread.run_sync(record_next)) is not None:
        for outcome, count in recorded.items():
            counts[Outcome(outcome)] += count
            done += count
            session.recorded += count
        session.show_progress(done, counts, session.settings.rate)


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
                await send_results.send(skipped(group.rows))
                return
            await send_results.send(await sender.send(group))

    async with send_results:
        async with anyio.create_task_group() as workers:
            for _ in range(concurrency):
                workers.start_soon(work)
        # The run stopped early: every row not handed out yet is reported as skipped.
        await grouper.drain(lambda rows: send_results.send(skipped(rows)))


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


@dataclass(frozen=True)
class RunStatus:
    """Where a run stands, read from its journal: `mateo-bulk status`."""

    run_dir: Path
    state: str
    total_rows: int
    counts: Mapping[Outcome, int]
    meta: Mapping[str, Any]

    @property
    def done(self) -> int:
        """Rows with a final outcome (skipped rows are still to be sent)."""
        return sum(
            count for outcome, count in self.counts.items() if outcome is not Outcome.SKIPPED
        )


def run_status(run_dir: str | Path) -> RunStatus:
    with Journal.open(Path(run_dir)) as journal:
        meta = journal.meta()
        state = meta.get("state", "unknown")
        if state == "running" and not journal.in_use():
            # The journal says running, but no process holds the run: it was killed.
            state = "stopped (process gone)"
        return RunStatus(Path(run_dir), state, meta.get("rows", 0), journal.counts(), meta)


def export_report(run_dir: str | Path, path: Path) -> int:
    """Write the run's report again, in the format `path`'s suffix names (`.html`: the HTML
    run report, see `pipeline.stages.html_report`); return the rows it covers."""
    if path.suffix.lower() == HTML_SUFFIX:
        if path.is_dir():
            raise InputError(f"--report {str(path)!r} is a directory; give a file name")
        with Journal.open(Path(run_dir)) as journal:
            write_html_report(journal, path)
            return sum(journal.counts().values())
    check_report_path(path)
    with Journal.open(Path(run_dir)) as journal:
        return write_report_batches(journal.result_batches(), path)


def apply_plan(
    plan_path: str | Path | pandas.DataFrame | pyarrow.Table,
    settings: RunSettings,
    *,
    on_progress: ProgressCallback | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    confirm: Confirm | None = None,
) -> RunSummary:
    """Apply exactly the `change` rows of a plan, each guarded by the values it was planned from.

    A row someone changed since the plan matches nothing and ends `conflict`, never overwritten.
    `max_changes` and `expect_rows` count the plan's `change` rows (the rows applied). The plan
    may be a DataFrame or Table of plan.csv's columns (its rows filtered, say).
    """
    frame = plan_path if is_frame(plan_path) else None
    named = FRAME_STEM if frame is not None else Path(plan_path)
    run_dir = Path(settings.run_dir) if settings.run_dir else default_run_dir(named)
    made_run_dir = not run_dir.exists()
    kept: Path | None = None
    try:
        if frame is not None:
            plan_path = kept = save_plan_frame(frame, run_dir)
        plan_path = Path(plan_path)
        changes = plan_to_input(plan_path, run_dir / "apply.csv", guarded=settings.guarded)
        if not changes:
            raise InputError(f"{plan_path} has no rows to change; nothing to apply")
        settings = dataclasses.replace(
            settings, input=run_dir / "apply.csv", run_dir=run_dir, snapshot=False, plan_only=False
        )
        return run(settings, on_progress=on_progress, transport=transport, confirm=confirm)
    except InputError as error:
        # Nothing was sent: leave no run directory that holds only the rows it would have sent.
        if made_run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
        if kept is not None:
            # Not the name of the copy just removed: the frame is what the caller gave.
            raise InputError(str(error).replace(str(kept), PLAN_FRAME_NAME)) from None
        raise
