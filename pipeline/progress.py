"""How a run shows itself on a terminal: a live bar, plain periodic lines, and the summary."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from pipeline.models import Outcome
from pipeline.runner import Progress, RunSummary

_SHOWN = (Outcome.UPDATED, Outcome.NOT_FOUND, Outcome.REJECTED, Outcome.FAILED, Outcome.INVALID)


def _counts(progress: Progress) -> str:
    parts = [f"{outcome.value} {progress.counts[outcome]:,}" for outcome in _SHOWN]
    return " · ".join(part for part in parts if not part.endswith(" 0")) or "starting"


class PlainProgress:
    """One line every `every` seconds: for logs, pipes and CI, where a live bar is noise."""

    def __init__(self, stream: TextIO = sys.stderr, every: float = 5.0) -> None:
        self._stream = stream
        self._every = every
        self._last = time.monotonic()

    def __call__(self, progress: Progress) -> None:
        now = time.monotonic()
        if now - self._last < self._every and progress.done < progress.total:
            return
        self._last = now
        rate = progress.done / progress.elapsed if progress.elapsed else 0.0
        print(
            f"mateo-bulk: {progress.done:,}/{progress.total:,} rows ({rate:,.1f} rows/s, "
            f"{progress.requests:,} requests) {_counts(progress)}",
            file=self._stream,
            flush=True,
        )

    def close(self) -> None:
        pass


class LiveProgress:
    """A rich progress bar on stderr: rows done of total, rate, ETA and counts per outcome."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bar

        self._bar = Bar(
            TextColumn("[bold]mateo-bulk"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} rows/s"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            TextColumn("{task.fields[counts]}"),
            console=Console(stderr=True),
            transient=False,
        )
        self._task = self._bar.add_task("rows", total=None, rate="-", counts="")
        self._bar.start()

    def __call__(self, progress: Progress) -> None:
        rate = progress.done / progress.elapsed if progress.elapsed else 0.0
        self._bar.update(
            self._task,
            completed=progress.done,
            total=progress.total,
            rate=f"{rate:,.1f}",
            counts=_counts(progress),
        )

    def close(self) -> None:
        self._bar.stop()


def summary_text(summary: RunSummary) -> str:
    """The end-of-run table of outcomes and where the report is."""
    lines = [
        f"{'dry run' if summary.dry_run else 'run'} finished in {summary.elapsed:,.1f} s: "
        f"{summary.total_rows:,} rows, {summary.requests:,} requests, "
        f"{summary.retries:,} retries"
    ]
    width = max(len(outcome.value) for outcome in Outcome)
    for outcome in Outcome:
        count = summary.counts.get(outcome, 0)
        if count or outcome in (Outcome.UPDATED, Outcome.PLANNED if summary.dry_run else None):
            lines.append(f"  {outcome.value:<{width}}  {count:>10,}")
    if summary.differences:
        lines.append(
            f"  {summary.differences:,} updated rows came back with values other than their "
            "target (see the report's difference column)"
        )
    lines += [f"  note: {notice}" for notice in summary.notices]
    if summary.report_path:
        lines.append(f"report: {summary.report_path}")
    if summary.failures_path:
        lines.append(f"failed and rejected rows, to fix and run again: {summary.failures_path}")
    lines.append(f"run directory: {summary.run_dir}")
    return "\n".join(lines)
