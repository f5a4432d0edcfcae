"""Which files a session leaves beside its journal, and where: the report, the plan, the undo
file, the fix-and-rerun file of failing rows and the HTML run report.

The writers are the report stage's (pipeline.stages.report, pipeline.stages.side_files,
pipeline.stages.html_report); this module decides which of them a session calls, from what
kind of run it was.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.models import Outcome
from pipeline.core.run_dir import RunDir, failures_file, side_file_suffix
from pipeline.stages.html_report import write_html_report
from pipeline.stages.input.input_file import InputFile
from pipeline.stages.journal import Journal
from pipeline.stages.report import InputCells, write_report_batches
from pipeline.stages.side_files import FAILING_OUTCOMES, write_failures, write_plan, write_undo


@dataclass(frozen=True)
class SideFiles:
    """The files a session wrote (None: not written), and what the plan found."""

    report_path: Path | None = None
    failures_path: Path | None = None
    #: `plan`: the plan file and its transitions ("field: before -> after": rows).
    plan_path: Path | None = None
    transitions: dict[str, int] = field(default_factory=dict)
    #: PATCHes applying the plan costs (groups of one change and one before).
    apply_requests: int = 0
    undo_path: Path | None = None


def report_path(run_dir: Path, report: Path | None) -> Path:
    """Where the run's report goes: --report, else the run directory's own."""
    return Path(report) if report else RunDir(run_dir).report


def write_side_files(
    journal: Journal,
    input_file: InputFile,
    *,
    run_dir: Path,
    report: Path | None,
    dry_run: bool,
    plan_only: bool,
    batch_size: int,
    report_written: Path | None,
    notice: Callable[[str], None],
) -> SideFiles:
    """Write what the session's journal holds into the files its kind of run leaves.

    `report_written`: the report, when a dry run wrote it as it went. `notice` is told what
    could not be written without failing the run.
    """
    files = RunDir(run_dir)
    path = report_path(run_dir, report)
    if report_written != path:
        carried = InputCells.carried(input_file)
        write_report_batches(journal.result_batches(), path, carried)
    plan_path = undo_path = failures_path = None
    transitions: dict[str, int] = {}
    apply_requests = 0
    suffix = side_file_suffix(input_file.format)
    if plan_only:
        plan_path = files.plan
        transitions, group_sizes = write_plan(journal.results(), plan_path)
        apply_requests = sum(-(-size // batch_size) for size in group_sizes)
    elif not dry_run:
        undo_path = files.undo(suffix)
        undoable = journal.results([Outcome.UPDATED, Outcome.SKIPPED, Outcome.FAILED])
        if not write_undo(undoable, undo_path, journal.fields_the_api_set()):
            undo_path = None
    failing = journal.rows_with(FAILING_OUTCOMES)
    if failing:
        failures_path = failures_file(path, suffix)
        write_failures(journal.results(FAILING_OUTCOMES), failures_path, input_file, failing)
    try:
        write_html_report(
            journal,
            files.html_report,
            report_path=path,
            undo_path=undo_path,
            failures_path=failures_path,
        )
    except (OSError, sqlite3.Error, ValueError) as error:
        # The page only presents what the journal and report hold: a run whose rows are
        # all accounted for does not fail for it. `mateo-bulk report` can write it later.
        notice(f"report.html could not be written ({error}); the report is complete")
    return SideFiles(path, failures_path, plan_path, transitions, apply_requests, undo_path)
