"""How a run shows itself on a terminal: a live bar, plain periodic lines, and the summary."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from pipeline.core.models import Outcome
from pipeline.core.run_dir import RunDir
from pipeline.orchestrator.summary import Progress, RunSummary

_SHOWN = (Outcome.UPDATED, Outcome.NOT_FOUND, Outcome.REJECTED, Outcome.FAILED, Outcome.INVALID)


def _limits(progress: Progress) -> str:
    """The shared rate now (it drops after a 429) and the day's budget left."""
    rate = "unlimited" if progress.rate is None else f"{progress.rate:,.2f} req/s"
    if progress.budget_left is None:
        return f"rate {rate}"
    return f"rate {rate}, budget left {progress.budget_left:,}"


def _counts(progress: Progress) -> str:
    parts = [f"{outcome.value} {progress.counts[outcome]:,}" for outcome in _SHOWN]
    return " · ".join(part for part in parts if not part.endswith(" 0")) or "no results yet"


def _waiting(progress: Progress) -> str:
    """What a long wait is for, as a line of its own: the phase says until when."""
    return f"{progress.phase}: {progress.waiting_reason}"


class PlainProgress:
    """One line every `every` seconds: for logs, pipes and CI, where a live bar is noise.
    A long wait for the API gets a line of its own when it starts."""

    def __init__(self, stream: TextIO | None = None, every: float = 5.0) -> None:
        # None: sys.stderr as it is at each line, not as it was when this module was imported.
        self._stream = stream
        self._every = every
        self._last = time.monotonic()
        self._wait_shown: object = None
        self._notices_shown = 0

    def __call__(self, progress: Progress) -> None:
        stream = self._stream or sys.stderr
        for notice in progress.notices[self._notices_shown :]:
            print(f"mateo-bulk: note: {notice}", file=stream, flush=True)
        self._notices_shown = len(progress.notices)
        if progress.waiting_until is not None and progress.waiting_until != self._wait_shown:
            self._wait_shown = progress.waiting_until
            print(f"mateo-bulk: {_waiting(progress)}", file=stream, flush=True)
        now = time.monotonic()
        if now - self._last < self._every and progress.done < progress.total:
            return
        self._last = now
        rate = progress.done / progress.elapsed if progress.elapsed else 0.0
        print(
            f"mateo-bulk: {progress.done:,}/{progress.total:,} rows ({rate:,.1f} rows/s, "
            f"{progress.requests:,} requests; {_limits(progress)}) {_counts(progress)}",
            file=stream,
            flush=True,
        )

    def close(self) -> None:
        pass


#: The width of the bar itself and of a duration as rich shows it ("0:12:34", "-:--:--").
_BAR, _DURATION = 20, 7


class LiveProgress:
    """A rich progress bar on stderr: the phase, rows done of total, ETA, the counts per outcome
    and, where the terminal is wide enough, a bar, the rate, the elapsed time and the limits.

    What shows is chosen from the terminal's width at every update (a terminal may be resized
    during a long run): the phase, the row count and the time left always; then a bar and the
    counts; then the rest. The counts are cut short to fit, never wrapped.
    """

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console
        from rich.progress import Progress as Bar

        self._console = console or Console(stderr=True)
        self._notices_shown = 0
        self._level = 1
        self._bar = Bar(*self._columns(self._level), console=self._console, transient=False)
        self._task = self._bar.add_task(
            "rows", total=None, rate="", limits="", counts="", phase="reading input"
        )
        self._bar.start()

    @staticmethod
    def _columns(level: int) -> list[Any]:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        columns: list[Any] = [TextColumn("[bold]{task.fields[phase]}")]
        if level >= 1:
            columns.append(BarColumn(bar_width=_BAR))
        columns += [MofNCompleteColumn(), TimeRemainingColumn()]
        if level >= 2:
            columns += [
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                TextColumn("{task.fields[limits]}"),
            ]
        if level >= 1:
            columns.append(TextColumn("{task.fields[counts]}"))
        return columns

    def __call__(self, progress: Progress) -> None:
        for notice in progress.notices[self._notices_shown :]:
            # Printed above the bar, which stays at the bottom.
            self._bar.console.print(f"mateo-bulk: note: {notice}", markup=False, highlight=False)
        self._notices_shown = len(progress.notices)
        phase = progress.phase or "working"
        rows_per_second = progress.done / progress.elapsed if progress.elapsed else 0.0
        rate = f"{rows_per_second:,.1f} rows/s"
        limits = _limits(progress)
        counts = _counts(progress)
        # Widths of what each level shows besides the counts, a space between columns.
        row_count = 2 * len(str(progress.total)) + 1
        narrow = len(phase) + 1 + row_count + 1 + _DURATION
        medium = narrow + 1 + _BAR
        wide = medium + 1 + len(rate) + 1 + _DURATION + 1 + len(limits)
        width = self._console.width
        shortest_counts = min(len(counts), 16)
        level = 0
        if wide + 1 + shortest_counts <= width:
            level = 2
        elif medium + 1 + shortest_counts <= width:
            level = 1
        if level != self._level:
            self._level = level
            self._bar.columns = tuple(self._columns(level))
        room = width - 1 - (wide if level == 2 else medium)
        if len(counts) > room:
            counts = counts[: max(room - 1, 0)] + "…"
        self._bar.update(
            self._task,
            completed=progress.done,
            total=progress.total,
            rate=rate,
            limits=limits,
            counts=counts,
            phase=phase,
        )

    @contextmanager
    def paused(self) -> Iterator[None]:
        """The bar stopped while a question is asked: it would redraw over the answer."""
        self._bar.stop()
        try:
            yield
        finally:
            self._bar.start()

    def close(self) -> None:
        self._bar.stop()


def summary_text(summary: RunSummary) -> str:
    """The end-of-run table of outcomes and where the report is."""
    lines = [
        f"{'dry run' if summary.dry_run else 'run'} "
        f"{'stopped after' if summary.stopped else 'finished in'} {summary.elapsed:,.1f} s: "
        f"{summary.total_rows:,} rows, {summary.requests:,} requests, "
        f"{summary.retries:,} retries"
    ]
    width = max(len(outcome.value) for outcome in Outcome)
    for outcome in Outcome:
        count = summary.counts.get(outcome, 0)
        if count or outcome is (Outcome.PLANNED if summary.dry_run else Outcome.UPDATED):
            lines.append(f"  {outcome.value:<{width}}  {count:>10,}")
    if summary.differences:
        lines.append(
            f"  {summary.differences:,} updated rows came back with values other than their "
            "target (see the report's difference column)"
        )
    lines += [f"  note: {notice}" for notice in summary.notices]
    if summary.dry_run:
        lines.append(plan_text(summary))
    elif summary.budget is not None:
        lines.append(
            f"daily budget: {summary.budget.left:,} of {summary.budget.limit:,} requests left "
            f"(resets {summary.budget.resets_at:%Y-%m-%d %H:%M} UTC)"
        )
    if summary.report_path:
        lines.append(f"report: {summary.report_path}")
        page = RunDir(summary.run_dir).html_report
        if page.is_file():
            lines.append(f"run report (open in a browser): {page}")
    if summary.failures_path:
        lines.append(
            f"failed, rejected and invalid rows, to fix and run again: {summary.failures_path}"
        )
    if not summary.dry_run and not summary.plan_path:
        lines.append(_undo_line(summary))
    lines.append(f"run directory: {summary.run_dir}")
    return "\n".join(lines)


def _undo_line(summary: RunSummary) -> str:
    """Where the undo file is, or why there is none: never left for the user to guess."""
    if summary.undo_path:
        return f"undo: {summary.undo_path} (`mateo-bulk run` it to put the changed rows back)"
    if summary.counts.get(Outcome.UPDATED, 0):
        return (
            "undo: NONE: the updated rows' values before the run are not known (--no-snapshot "
            "without expect_* columns); this run cannot be undone by mateo-bulk"
        )
    return "undo: none needed: this run changed no rows"


def plan_text(summary: RunSummary) -> str:
    """The dry run's request plan: what the real run will cost, and whether today allows it."""
    requests = summary.estimated_requests
    rate = summary.rate
    line = f"plan: about {requests:,} requests"
    if summary.estimated_reads:
        line += (
            f" ({summary.estimated_reads:,} snapshot reads, "
            f"{requests - summary.estimated_reads:,} PATCHes)"
        )
    quota = summary.daily_quota
    if quota and requests > quota:
        # The quota, not the rate, bounds a run this large.
        line += f", {-(-requests // quota)} API days at {quota:,} requests a day"
    elif rate:
        line += f", {_duration(requests / rate)} at {rate:g} requests/s"
    budget = summary.budget
    if budget is None:
        return line + "; set MATEO_API_TOKEN to see the share of today's budget it needs"
    share = requests / budget.left if budget.left else float("inf")
    line += (
        f"; today's budget has {budget.left:,} of {budget.limit:,} requests left "
        f"(this run needs {share:.0%} of it"
    )
    if requests > budget.left:
        line += (
            f"; it will stop when the budget is spent and can be resumed after "
            f"{budget.resets_at:%Y-%m-%d %H:%M} UTC"
        )
    return line + ")"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:,.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:,.0f} min"
    return f"{seconds / 3600:,.1f} h"


def plan_summary_text(summary: RunSummary) -> str:
    """What `plan` found: transitions with counts, rows left alone, and what apply will cost."""
    counts = summary.counts
    changing = counts.get(Outcome.PLANNED, 0)
    lines = [
        f"plan: {summary.total_rows:,} rows: {changing:,} to change, "
        f"{counts.get(Outcome.UNCHANGED, 0):,} already there, "
        f"{counts.get(Outcome.NOT_FOUND, 0):,} not found, "
        f"{counts.get(Outcome.INVALID, 0):,} invalid"
        + (f", {counts[Outcome.CONFLICT]:,} conflicting" if counts.get(Outcome.CONFLICT) else "")
        + (f", {counts[Outcome.FAILED]:,} unreadable" if counts.get(Outcome.FAILED) else "")
    ]
    for transition, count in sorted(summary.transitions.items(), key=lambda item: -item[1]):
        lines.append(f"  {transition}  x{count:,}")
    cost = f"apply will cost about {summary.apply_requests:,} requests"
    if summary.budget is not None and summary.budget.left:
        cost += f" ({summary.apply_requests / summary.budget.left:.1%} of today's budget left)"
    lines.append(cost + f"; this plan cost {summary.requests:,}")
    lines.append(f"plan file: {summary.plan_path}")
    lines.append(f"apply it with: mateo-bulk apply {summary.plan_path}")
    return "\n".join(lines)
