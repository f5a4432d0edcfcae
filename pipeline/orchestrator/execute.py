"""One session of a run from its start to its summary: the session's tasks run, the journal
told how they ended, the side files written, the summary made."""

from __future__ import annotations

import dataclasses
import time
from datetime import UTC, datetime

import httpx

from pipeline.api.account import account_fingerprint
from pipeline.core.errors import Interrupted, MateoBulkError
from pipeline.orchestrator.hooks import AnswersLookup
from pipeline.orchestrator.session import Session
from pipeline.orchestrator.settings import RunSettings
from pipeline.orchestrator.summary import ProgressCallback, RunSummary
from pipeline.orchestrator.tasks import run_session
from pipeline.stages.input.input_file import InputFile
from pipeline.stages.journal import Journal
from pipeline.stages.prepare import Validation
from pipeline.stages.session_files import SideFiles, write_side_files

#: How a run finds what `mateo-bulk doctor` stored for an account and base URL (the CLI passes
#: pipeline.api.account.load_answers); None: the run starts from its own settings.


def now_text() -> str:
    """Now, as the journal keeps times."""
    return datetime.now(UTC).isoformat(timespec="seconds")


async def execute_session(
    settings: RunSettings,
    journal: Journal,
    input_file: InputFile,
    validation: Validation,
    *,
    retry_failed: bool,
    on_progress: ProgressCallback | None,
    transport: httpx.AsyncBaseTransport | None,
    handle_signals: bool,
    stored_answers: AnswersLookup | None,
) -> RunSummary:
    """Run one session of the run `journal` keeps, to its end or a stop, and sum it up."""
    settings, learned = _apply_doctor_answers(settings, stored_answers)
    assert settings.run_dir is not None
    ledger = settings.ledger()
    session = Session(
        settings,
        journal,
        input_file,
        validation,
        retry_failed,
        on_progress,
        ledger,
        handle_signals=handle_signals,
    )
    control = session.control
    if learned:
        control.notice(learned)
    for warning in input_file.warnings:
        control.notice(warning)
    # resume_async marks the journal resumed before it gets here; a new run's never is.
    session.record_event("resume" if journal.meta().get("resumed_at") else "start")
    try:
        await run_session(session, transport)
    except BaseException as error:
        reason = error if isinstance(error, MateoBulkError) else Interrupted("stopped at once")
        journal.set_meta({"state": "stopped", "stop_reason": str(reason), "stopped_at": now_text()})
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
        {"state": "stopped", "stop_reason": str(stopped), "stopped_at": now_text()}
        if stopped
        else {"state": "finished", "finished_at": now_text()}
    )
    session.record_event("stop" if stopped else "finish", str(stopped) if stopped else None)
    files = SideFiles()
    if not control.aborted:
        files = write_side_files(
            journal,
            input_file,
            run_dir=settings.run_dir,
            report=settings.report,
            dry_run=settings.dry_run,
            plan_only=settings.plan_only,
            batch_size=settings.batch_size,
            report_written=session.report_written,
            notice=control.notice,
        )
    reads = validation.estimated_reads() if settings.snapshot else 0
    return RunSummary(
        counts=journal.counts(),
        total_rows=validation.total_rows,
        requests=control.requests,
        retries=control.retries,
        rate_limited=control.rate_limited,
        report_path=files.report_path,
        run_dir=settings.run_dir,
        elapsed=time.monotonic() - session.started,
        dry_run=settings.dry_run,
        differences=0 if settings.dry_run else journal.differences(),
        stopped=stopped,
        notices=tuple(control.notices),
        failures_path=files.failures_path,
        estimated_requests=validation.estimated_requests(settings.batch_size) + reads,
        estimated_reads=reads,
        daily_quota=settings.daily_quota,
        budget=budget,
        rate=settings.rate,
        plan_path=files.plan_path,
        transitions=files.transitions,
        apply_requests=files.apply_requests,
        undo_path=files.undo_path,
    )


def _apply_doctor_answers(
    settings: RunSettings, stored_answers: AnswersLookup | None
) -> tuple[RunSettings, str | None]:
    """Start at the batch size `mateo-bulk doctor` found this account's API accepts.

    Without stored answers the run starts at --batch-size and degrades when refused (414,
    406, 400 on the filter); with them, it need not spend requests finding out.
    """
    if stored_answers is None or not settings.token or settings.dry_run:
        return settings, None
    document = stored_answers(settings.token, settings.base_url) or {}
    recommended = (document.get("answers") or {}).get("recommended_batch_size")
    if isinstance(recommended, int) and 1 <= recommended < settings.batch_size:
        note = (
            f"batch size {recommended} (not {settings.batch_size}): what `mateo-bulk doctor` "
            f"found this API accepts on {document.get('checked_at', '?')}"
        )
        return dataclasses.replace(settings, batch_size=recommended), note
    return settings, None
