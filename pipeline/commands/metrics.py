"""Figures for Prometheus: how a scheduled run went, as a file for node_exporter's textfile
collector (`--metrics-file PATH` on `run`, `resume` and `job`; `metrics_file` in a job file).

The file holds gauges about the last run (its rows by outcome, requests, 429s, retries, duration
and exit code, and when it ended) and the time of the last successful run, which a failed run
carries over from the file it replaces: "no success for two days" is one alert rule.

Every series has the label `name`, the file's name without `.prom`: the collector reads every
*.prom file in its directory, and two files with the same series would make it fail the scrape,
so names from file names can never clash. The file is written to a temporary file beside it and
renamed over it (node_exporter's own advice), so a scrape never sees half a file.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.core.errors import InputError
from pipeline.core.models import Outcome

if TYPE_CHECKING:
    from pipeline.commands.jobs import JobSummary
    from pipeline.orchestrator.summary import RunSummary

#: node_exporter's textfile collector reads files with this suffix only.
SUFFIX = ".prom"
PREFIX = "mateo_bulk_"
LAST_SUCCESS = f"{PREFIX}last_success_timestamp_seconds"
#: Readable by node_exporter, which runs as a user of its own (mkstemp would make it 0600).
FILE_MODE = 0o644


@dataclass(frozen=True)
class RunFigures:
    """What the metrics file says about one run (or one command that ended in an error)."""

    exit_code: int
    #: Rows by outcome over the whole run (every session of a resumed one).
    rows: Mapping[Outcome, int] = field(default_factory=dict)
    input_rows: int = 0
    #: Requests, 429 answers and retries of this session (a query job's requests and retries
    #: include its GETs).
    requests: int = 0
    rate_limited: int = 0
    retries: int = 0
    #: Seconds the command took, start to end.
    duration: float = 0.0
    dry_run: bool = False
    #: When it ended, in seconds since the epoch.
    finished_at: float = field(default_factory=time.time)

    @property
    def succeeded(self) -> bool:
        """Exit 0 on a run that sends: a dry run changes nothing, so it is no success of a job."""
        return self.exit_code == 0 and not self.dry_run

    @classmethod
    def of_run(cls, summary: RunSummary, *, duration: float) -> RunFigures:
        return cls(
            exit_code=summary.exit_code,
            rows=dict(summary.counts),
            input_rows=summary.total_rows,
            requests=summary.requests,
            rate_limited=summary.rate_limited,
            retries=summary.retries,
            duration=duration,
            dry_run=summary.dry_run,
        )

    @classmethod
    def of_job(cls, job: JobSummary, *, duration: float) -> RunFigures:
        """A job's figures: its exit code (max_failed_share applied); a query that selected
        nothing has no rows, and its GETs as requests."""
        if job.run is not None:
            figures = cls.of_run(job.run, duration=duration)
            return dataclasses.replace(figures, exit_code=job.exit_code)
        selected = job.selected
        return cls(
            exit_code=job.exit_code,
            requests=selected.requests if selected else 0,
            retries=selected.retries if selected else 0,
            duration=duration,
            dry_run=job.resolved.settings.dry_run,
        )


def check_metrics_path(path: str | Path, *, flag: str = "--metrics-file") -> Path:
    """The path, once it is sure a file can be put there; InputError (exit 2) otherwise.

    Checked before a run starts, so that a typo in the path is not found out after the run.
    """
    path = Path(path)
    if path.suffix != SUFFIX:
        raise InputError(
            f"{flag} {str(path)!r}: the name must end in {SUFFIX} (node_exporter's textfile "
            f"collector reads only *{SUFFIX} files)"
        )
    if path.is_dir():
        raise InputError(f"{flag} {str(path)!r} is a directory; give a file name")
    directory = path.parent
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "does not exist"
        raise InputError(f"{flag} {str(path)!r}: {directory} {what}; create it first")
    try:
        # A real try: permissions alone do not tell (root, read-only mounts, ACLs).
        descriptor, probe = tempfile.mkstemp(dir=directory, prefix=".mateo-bulk-", suffix=".tmp")
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise InputError(f"{flag} {str(path)!r}: cannot write in {directory} ({reason})") from None
    os.close(descriptor)
    os.unlink(probe)
    return path


def last_success(path: Path) -> float | None:
    """The last success time a metrics file holds; None if it holds none (or is unreadable)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    for line in text.splitlines():
        found = re.fullmatch(rf"{LAST_SUCCESS}(?:\{{[^}}]*\}})?\s+(\S+)(?:\s+\S+)?", line.strip())
        if found:
            try:
                value = float(found.group(1))
            except ValueError:
                return None
            return value if math.isfinite(value) and value > 0 else None
    return None


def metrics_text(figures: RunFigures, *, name: str, last_success: float | None) -> str:
    """The file's content in the Prometheus text exposition format (version 0.0.4)."""
    label = f'name="{_escape(name)}"'
    lines: list[str] = []

    def gauge(metric: str, help: str, values: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP {PREFIX}{metric} {help}")
        lines.append(f"# TYPE {PREFIX}{metric} gauge")
        for labels, value in values:
            lines.append(f"{PREFIX}{metric}{{{labels}}} {_number(value)}")

    gauge(
        "last_run_rows",
        "Rows of the last run by outcome (all its sessions).",
        [
            (f'{label},outcome="{outcome.value}"', figures.rows.get(outcome, 0))
            for outcome in Outcome
        ],
    )
    gauge("last_run_input_rows", "Rows in the last run's input.", [(label, figures.input_rows)])
    gauge(
        "last_run_requests",
        "Requests the last run sent (a resumed run: this session).",
        [(label, figures.requests)],
    )
    gauge(
        "last_run_rate_limited_responses",
        "HTTP 429 (too many requests) answers the last run got.",
        [(label, figures.rate_limited)],
    )
    gauge("last_run_retries", "Requests the last run sent again.", [(label, figures.retries)])
    gauge(
        "last_run_duration_seconds",
        "How long the last run's command took.",
        [(label, round(figures.duration, 3))],
    )
    gauge(
        "last_run_exit_code",
        "The last run's exit code: 0 all updated, 1 some not, 2 bad input (nothing sent), "
        "3 stopped early (resumable), 4 safety stop.",
        [(label, figures.exit_code)],
    )
    gauge("last_run_dry_run", "1 if the last run was a dry run.", [(label, int(figures.dry_run))])
    gauge(
        "last_run_timestamp_seconds",
        "When the last run ended, in seconds since the epoch.",
        [(label, round(figures.finished_at, 3))],
    )
    success = round(figures.finished_at, 3) if figures.succeeded else last_success
    if success is not None:
        gauge(
            "last_success_timestamp_seconds",
            "When a run last ended with exit code 0 (not a dry run), in seconds since the epoch.",
            [(label, success)],
        )
    return "\n".join(lines) + "\n"


def write_metrics(path: str | Path, figures: RunFigures) -> Path:
    """Write the figures to `path` at once (a temporary file renamed over it); return the path.

    The last success time is this run's if it succeeded, else the one the file held. OSError
    if the file cannot be written.
    """
    path = Path(path)
    text = metrics_text(figures, name=path.stem, last_success=last_success(path))
    # Hidden and not *.prom: the collector never reads the temporary file.
    descriptor, temporary = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"
    )
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8", newline="\n") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, FILE_MODE)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))
