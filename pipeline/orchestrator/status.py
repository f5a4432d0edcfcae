"""Where a finished or stopped run stands, and its report written again: read from its journal."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.errors import InputError
from pipeline.core.models import Outcome
from pipeline.stages.html_report import HTML_SUFFIX, write_html_report
from pipeline.stages.journal import Journal
from pipeline.stages.report import check_report_path, write_report_batches


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
            return journal.recorded()
    check_report_path(path)
    with Journal.open(Path(run_dir)) as journal:
        return write_report_batches(journal.result_batches(), path)
