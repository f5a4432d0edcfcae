"""What a run shows as it goes (`Progress`) and what it did when it ends (`RunSummary`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.api.quota import Budget
from pipeline.core.errors import MateoBulkError
from pipeline.core.models import Outcome
from pipeline.stages.frames import report_frame

if TYPE_CHECKING:
    import pandas


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


#: Asked, once the input is validated and before anything is sent, whether to go on with this
#: many conversations to change (at most: rows already at their target are skipped); False
#: refuses the run (InputError, nothing sent). Not asked on a dry run or a plan.
Confirm = Callable[[int], bool]
