"""One session of a run: what every task of it shares, and how it shows its progress."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.api.quota import QuotaLedger
from pipeline.api.request_path import RunControl
from pipeline.core.models import Outcome
from pipeline.orchestrator.settings import RunSettings
from pipeline.orchestrator.summary import Progress, ProgressCallback
from pipeline.stages.input.input_file import InputFile
from pipeline.stages.journal import Journal
from pipeline.stages.prepare import Validation


@dataclass
class Session:
    """One session of a run: what every stage shares."""

    settings: RunSettings
    journal: Journal
    input_file: InputFile
    validation: Validation
    retry_failed: bool
    on_progress: ProgressCallback | None
    ledger: QuotaLedger | None
    #: Whether SIGINT/SIGTERM stop this session (see pipeline.orchestrator.signals).
    handle_signals: bool = False
    control: RunControl = field(default_factory=RunControl)
    started: float = field(default_factory=time.monotonic)
    #: The report, when a dry run wrote it as it went (see pipeline.orchestrator.tasks).
    report_written: Path | None = None
    #: Rows whose results this session committed (duplicates' followers included).
    recorded: int = 0
    #: The counts of the last timeline event written: an idle second writes none.
    _last_event: tuple[int, ...] = ()
    #: The last progress shown, and the wait it showed: a wait that starts while no result
    #: comes in is shown again (see pipeline.orchestrator.tasks).
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
