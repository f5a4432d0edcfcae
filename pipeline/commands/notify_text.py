"""What a notification says: one fact per line about how a run, a job or a command ended.

`notify` decides whether to send and sends; this module only writes the text, so the message
can be read and tested without a webhook. Nothing here holds the webhook's URL.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.core.errors import RunStopped, SafetyError
from pipeline.core.models import Outcome
from pipeline.orchestrator.summary import RunSummary

if TYPE_CHECKING:
    from pipeline.commands.jobs import JobSummary


def _headline(exit_code: int, stop: BaseException | None, dry_run: bool) -> str:
    if isinstance(stop, SafetyError):
        return f"stopped by a safety check (exit {exit_code})"
    if stop is not None:
        return f"stopped early (exit {exit_code})"
    what = "dry run finished" if dry_run else "finished"
    return f"{what} (exit {exit_code})" if exit_code == 0 else f"{what} with failures (exit 1)"


def _counts(summary: RunSummary) -> str:
    parts = [
        f"{outcome.value} {summary.counts[outcome]:,}"
        for outcome in Outcome
        if summary.counts.get(outcome)
    ]
    text = f"rows: {summary.total_rows:,}" + (f": {', '.join(parts)}" if parts else "")
    if summary.differences:
        text += f" ({summary.differences:,} updated with a difference)"
    return text


def _command(*words: object) -> str:
    return "`mateo-bulk " + " ".join(str(word) for word in words) + "`"


def _where(path: Path | None) -> str:
    # Absolute: whoever reads the message is not in the job's working directory.
    return str(Path(path).absolute()) if path is not None else ""


def run_text(
    summary: RunSummary,
    *,
    command: str,
    exit_code: int | None = None,
    notes: Sequence[str] = (),
    sandbox: bool = False,
    resumed: bool = False,
) -> str:
    """The message for a run that ended (finished or stopped), one fact per line."""
    code = summary.exit_code if exit_code is None else exit_code
    run_dir = _where(summary.run_dir)
    lines = [
        f"mateo-bulk {command} on {socket.gethostname()}: "
        + _headline(code, summary.stopped, summary.dry_run)
    ]
    if summary.stopped is not None:
        lines.append(f"reason: {summary.stopped}")
    lines.append(_counts(summary))
    lines.append(
        f"requests: {summary.requests:,} ({summary.retries:,} retries) in "
        f"{summary.elapsed:,.1f} s" + (" (this session)" if resumed else "")
    )
    lines += notes
    if summary.report_path is not None:
        lines.append(f"report: {_where(summary.report_path)}")
    if summary.failures_path is not None:
        lines.append(f"failed, rejected and invalid rows: {_where(summary.failures_path)}")
    lines.append(f"run directory: {run_dir}")
    again = ("--sandbox",) if sandbox else ()
    if isinstance(summary.stopped, RunStopped):
        lines.append("resume: " + _command("resume", run_dir, *again))
    elif summary.stopped is None and summary.counts.get(Outcome.FAILED):
        lines.append("retry the failed rows: " + _command("resume", run_dir, "--retry-failed"))
    if summary.undo_path is not None:
        lines.append("undo: " + _command("run", _where(summary.undo_path)))
    return "\n".join(lines)


def job_text(job: JobSummary, *, sandbox: bool = False) -> str:
    """The message for a job that ended: the run's, with the query and the failed share."""
    notes = []
    if job.selected is not None:
        notes.append(
            f"query: {job.selected.rows:,} conversations selected with "
            f"{job.selected.requests:,} GETs"
        )
    share = job.resolved.max_failed_share
    if share is not None and job.run is not None and job.run.stopped is None:
        notes.append(
            f"failed share: {job.failed_share:.1%} ({job.failed_rows:,} of {job.total_rows:,} "
            f"rows; max_failed_share {share:g})"
        )
    command = f"job {job.resolved.spec.name}"
    if job.run is not None:
        return run_text(
            job.run, command=command, exit_code=job.exit_code, notes=notes, sandbox=sandbox
        )
    return "\n".join(
        [
            f"mateo-bulk {command} on {socket.gethostname()}: "
            f"{_headline(job.exit_code, None, job.resolved.settings.dry_run)}",
            "the query selected no conversations: nothing to change",
            *notes,
            f"report: {_where(job.report_path)}",
            f"run directory: {_where(job.run_dir)}",
        ]
    )


def stopped_text(error: BaseException, *, command: str, exit_code: int) -> str:
    """The message for a command that stopped before a run could sum up (a job's query)."""
    return (
        f"mateo-bulk {command} on {socket.gethostname()}: {_headline(exit_code, error, False)}\n"
        f"reason: {error}\nno conversation was changed"
    )


def payload(text: str, *, secrets: Iterable[str] = ()) -> dict[str, str]:
    """The JSON body: `text` with every secret blanked (a reason could quote a header)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    return {"text": text}
