"""`--log-format json`: one JSON object per line on stderr, for schedulers and log shippers.

Events: `start`, `query` (a job's query source: rows selected, GETs spent, dates resolved),
`progress` (at most every few seconds, and once at the end; its `phase` says what the run does),
`waiting` (a long wait for the API began: `until`, `seconds`, `reason`), `notice` (something
the run has to say, as it comes: `message`; the summary repeats them), `stop` (the run stopped
early, or never started, with the reason and exit code) and `summary` (outcome counts, requests,
the report and the exit code); after it, `notify` when a webhook message was due
(pipeline.commands.notify writes it). Every object has `event` and `time` (UTC, ISO 8601).
Nothing else is written to stderr in this format; stdout keeps the human summary.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from pipeline.core.errors import MateoBulkError, RunStopped
from pipeline.orchestrator.summary import Progress, RunSummary

if TYPE_CHECKING:
    from pipeline.commands.jobs import JobSummary
    from pipeline.commands.query_source import SelectedIds

#: Seconds between progress events; the last one (all rows done) is always written.
PROGRESS_EVERY = 5.0


def _value(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return value


class JsonEvents:
    """Writes events as JSON lines; also a progress callback for `run(on_progress=...)`."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        every: float = PROGRESS_EVERY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._every = every
        self._clock = clock
        self._last_progress: float | None = None
        self._wait_shown: datetime | None = None
        self._notices_shown = 0

    def emit(self, event: str, **fields: Any) -> None:
        record = {"event": event, "time": datetime.now(UTC).isoformat(timespec="milliseconds")}
        record.update({name: _value(value) for name, value in fields.items()})
        stream = self._stream or sys.stderr
        stream.write(json.dumps(record, default=str) + "\n")
        stream.flush()

    def start(self, **fields: Any) -> None:
        self.emit("start", **fields)

    def __call__(self, progress: Progress) -> None:
        """A `progress` event, at most every `every` seconds, and when every row is done; a
        `waiting` event as soon as a long wait begins (a scheduler may else think it hung)."""
        for notice in progress.notices[self._notices_shown :]:
            self.emit("notice", message=notice)
        self._notices_shown = len(progress.notices)
        until = progress.waiting_until
        if until is not None and until != self._wait_shown:
            self._wait_shown = until
            self.emit(
                "waiting",
                until=until.isoformat(timespec="seconds"),
                seconds=round((until - datetime.now(UTC)).total_seconds(), 1),
                reason=progress.waiting_reason,
            )
        now = self._clock()
        finished = progress.done >= progress.total
        if (
            not finished
            and self._last_progress is not None
            and now - self._last_progress < self._every
        ):
            return
        self._last_progress = now
        self.emit(
            "progress",
            done=progress.done,
            total=progress.total,
            requests=progress.requests,
            elapsed=round(progress.elapsed, 3),
            rate=progress.rate,
            budget_left=progress.budget_left,
            counts={outcome.value: count for outcome, count in progress.counts.items() if count},
            phase=progress.phase,
        )

    def selected(self, selected: SelectedIds) -> None:
        """A job's query has read its ids."""
        self.emit(
            "query",
            rows=selected.rows,
            requests=selected.requests,
            retries=selected.retries,
            filters=dict(selected.query.resolved),
            dates=dict(selected.query.dates),
            ids_file=selected.ids_path,
        )

    def summary(self, summary: RunSummary, *, exit_code: int | None = None, **fields: Any) -> None:
        """`stop` first if the run stopped early, then `summary`."""
        code = summary.exit_code if exit_code is None else exit_code
        if summary.stopped is not None:
            self.stop(summary.stopped, exit_code=code, run_dir=summary.run_dir)
        self.emit(
            "summary",
            exit_code=code,
            dry_run=summary.dry_run,
            rows=summary.total_rows,
            counts={outcome.value: count for outcome, count in summary.counts.items() if count},
            requests=summary.requests,
            retries=summary.retries,
            differences=summary.differences,
            elapsed=round(summary.elapsed, 3),
            notices=list(summary.notices),
            budget_left=summary.budget.left if summary.budget else None,
            report=summary.report_path,
            failures_report=summary.failures_path,
            run_dir=summary.run_dir,
            **fields,
        )

    def job_summary(self, job: JobSummary) -> None:
        """The summary of a job, including one whose query selected nothing."""
        extra: dict[str, Any] = {"job": job.resolved.spec.name}
        if job.resolved.max_failed_share is not None:
            extra["failed_share"] = round(job.failed_share, 6)
            extra["max_failed_share"] = job.resolved.max_failed_share
        if job.selected is not None:
            extra["query_requests"] = job.selected.requests
        if job.run is not None:
            self.summary(job.run, exit_code=job.exit_code, **extra)
            return
        self.emit(
            "summary",
            exit_code=job.exit_code,
            dry_run=job.resolved.settings.dry_run,
            rows=0,
            counts={},
            requests=0,
            report=job.report_path,
            run_dir=job.run_dir,
            **extra,
        )

    def stop(self, error: BaseException, *, exit_code: int, **fields: Any) -> None:
        """The run stopped early, or could not start (a bad file or flag: exit code 2)."""
        run_dir = fields.get("run_dir")
        if isinstance(error, RunStopped) and run_dir is not None:
            fields["resume"] = f"mateo-bulk resume {run_dir}"
        self.emit(
            "stop",
            exit_code=exit_code,
            error=type(error).__name__,
            reason=str(error) if isinstance(error, MateoBulkError) else repr(error),
            **fields,
        )

    def close(self) -> None:
        """Nothing to flush: every event is written whole when it happens."""
