"""Puts the stages in order — prepare → group → send → journal → report — and is the Python API.

from pipeline.orchestrator.runner import RunSettings, run, resume
summary = run(RunSettings("reassign.csv", token=token))
print(summary.counts, summary.report_path)
# stopped (exit_code 3)? later:
summary = resume(summary.run_dir, token=token)
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Unpack

import anyio
import httpx

from pipeline.api.account import account_fingerprint
from pipeline.core.errors import InputError
from pipeline.core.models import Outcome
from pipeline.core.run_dir import RunDir, default_run_dir
from pipeline.orchestrator.event_loop import run_in_loop
from pipeline.orchestrator.execute import execute_session, now_text
from pipeline.orchestrator.hooks import ProcessHooks, SessionHooks, check_hooks
from pipeline.orchestrator.settings import RunSettings
from pipeline.orchestrator.summary import Confirm, ProgressCallback, RunSummary
from pipeline.stages.frames import (
    FRAME_STEM,
    PLAN_FRAME_NAME,
    is_frame,
    save_frame,
    save_plan_frame,
)
from pipeline.stages.input.opening import open_input
from pipeline.stages.journal import Journal
from pipeline.stages.prepare import validate_file
from pipeline.stages.side_files import plan_to_input

if TYPE_CHECKING:
    import pandas
    import pyarrow

_NO_STDIN = 'input "-" reads CSV from stdin: pass stdin= (e.g. sys.stdin.buffer) to read it'


def run(
    settings: RunSettings,
    *,
    on_progress: ProgressCallback | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    confirm: Confirm | None = None,
    **process: Unpack[ProcessHooks],
) -> RunSummary:
    """Run a bulk update to the end (or to a stop) and return its summary.

    Raises InputError (nothing sent) for a bad file, column or setting, counts off
    `max_changes` or `expect_rows`, or a `confirm` that said no. Every other problem
    ends up in the summary: per-row outcomes in `counts` and the report, a run-wide stop
    (auth, interrupt, safety) in `stopped`.

    The run changes nothing of the process it runs in unless asked, as the CLI asks: see
    `ProcessHooks` (`handle_signals`, `stored_answers`, `stdin`).
    """
    return run_in_loop(
        run_async(
            settings, on_progress=on_progress, transport=transport, confirm=confirm, **process
        )
    )


def plan(
    settings: RunSettings,
    *,
    on_progress: ProgressCallback | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    **process: Unpack[ProcessHooks],
) -> RunSummary:
    """Read every row and write the plan (`plan.csv`: before, after, decision); change nothing.

    `apply_plan` then sends exactly the `change` rows, each guarded by its before-values.
    `process` is `run`'s.
    """
    return run_in_loop(
        plan_async(settings, on_progress=on_progress, transport=transport, **process)
    )


async def plan_async(
    settings: RunSettings,
    *,
    on_progress: ProgressCallback | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    **process: Unpack[ProcessHooks],
) -> RunSummary:
    """The same as `plan`, inside a running event loop."""
    return await run_async(
        dataclasses.replace(settings, plan_only=True),
        on_progress=on_progress,
        transport=transport,
        **process,
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
    **session: Unpack[SessionHooks],
) -> RunSummary:
    """Continue a stopped run: rows with a final outcome are not sent again.

    `overrides` changes how the rest is sent (any of RESUME_OVERRIDES, e.g. {"rate": 1.0,
    "wait": False}); the journal records them. Raises InputError if the input file changed
    since the run started. `session` is `run`'s (`SessionHooks`).
    """
    return run_in_loop(
        resume_async(
            run_dir,
            token=token,
            retry_failed=retry_failed,
            report=report,
            on_progress=on_progress,
            transport=transport,
            quota_clock=quota_clock,
            overrides=overrides,
            **session,
        )
    )


async def run_async(
    settings: RunSettings,
    *,
    on_progress: ProgressCallback | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    confirm: Confirm | None = None,
    **process: Unpack[ProcessHooks],
) -> RunSummary:
    """The same as `run`, inside a running event loop."""
    check_hooks(process, ProcessHooks, "run")
    stdin = process.get("stdin")
    settings.check()
    frame = is_frame(settings.input)
    named = FRAME_STEM if frame else settings.input
    run_dir = Path(settings.run_dir) if settings.run_dir else default_run_dir(named)
    settings = dataclasses.replace(settings, run_dir=run_dir)
    if RunDir(run_dir).journal.exists():
        Journal.create(run_dir, {})  # raises the "already holds a run" error
    if str(settings.input) == "-" and stdin is None:
        raise InputError(_NO_STDIN)
    made_run_dir = not run_dir.exists()
    try:
        settings = await _input_kept_in_run_dir(settings, run_dir, stdin)
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
                "started_at": now_text(),
            }
            with Journal.create(run_dir, meta) as journal:
                summary = await execute_session(
                    settings,
                    journal,
                    input_file,
                    validation,
                    retry_failed=False,
                    on_progress=on_progress,
                    transport=transport,
                    handle_signals=process.get("handle_signals", False),
                    stored_answers=process.get("stored_answers"),
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
    **session: Unpack[SessionHooks],
) -> RunSummary:
    """The same as `resume`, inside a running event loop."""
    check_hooks(session, SessionHooks, "resume")
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
                {"state": "running", "resumed_at": now_text(), "resume_overrides": overrides}
            )
            return await execute_session(
                settings,
                journal,
                input_file,
                validation,
                retry_failed=retry_failed,
                on_progress=on_progress,
                transport=transport,
                handle_signals=session.get("handle_signals", False),
                stored_answers=session.get("stored_answers"),
            )


async def _input_kept_in_run_dir(
    settings: RunSettings, run_dir: Path, stdin: BinaryIO | None
) -> RunSettings:
    """The settings, reading a frame's or stdin's rows from their copy in the run directory:
    only this process holds them, and the run must be resumable once it is gone."""
    if is_frame(settings.input):
        # Kept as Parquet, read from there as any Parquet input.
        kept = await anyio.to_thread.run_sync(
            save_frame, settings.input, run_dir, settings.column_map
        )
        return dataclasses.replace(settings, input=kept)
    if str(settings.input) == "-":
        assert stdin is not None
        return dataclasses.replace(settings, input=RunDir(run_dir).copy_stdin(stdin))
    return settings


def _relative_to(path: Path, directory: Path) -> str | None:
    try:
        return str(path.resolve().relative_to(directory.resolve()))
    except ValueError:
        return None


#: Invalid rows a --strict refusal names; the report and the fix-and-rerun file hold them all.
_INVALID_ROWS_LISTED = 100


def _invalid_rows(journal: Journal, summary: RunSummary, describe_row: Callable[[int], str]) -> str:
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


def apply_plan(
    plan_path: str | Path | pandas.DataFrame | pyarrow.Table,
    settings: RunSettings,
    *,
    on_progress: ProgressCallback | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    confirm: Confirm | None = None,
    **session: Unpack[SessionHooks],
) -> RunSummary:
    """Apply exactly the `change` rows of a plan, each guarded by the values it was planned from.

    A row someone changed since the plan matches nothing and ends `conflict`, never overwritten.
    `max_changes` and `expect_rows` count the plan's `change` rows (the rows applied). The plan
    may be a DataFrame or Table of plan.csv's columns (its rows filtered, say).
    `session` is `run`'s (`SessionHooks`).
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
        apply_input = RunDir(run_dir).apply_input
        changes = plan_to_input(plan_path, apply_input, guarded=settings.guarded)
        if not changes:
            raise InputError(f"{plan_path} has no rows to change; nothing to apply")
        settings = dataclasses.replace(
            settings, input=apply_input, run_dir=run_dir, snapshot=False, plan_only=False
        )
        return run(
            settings, on_progress=on_progress, transport=transport, confirm=confirm, **session
        )
    except InputError as error:
        # Nothing was sent: leave no run directory that holds only the rows it would have sent.
        if made_run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
        if kept is not None:
            # Not the name of the copy just removed: the frame is what the caller gave.
            raise InputError(str(error).replace(str(kept), PLAN_FRAME_NAME)) from None
        raise
