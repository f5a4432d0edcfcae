"""A run directory: the one place that names its files, takes its lock and keeps stdin's copy.

Every layer reads or writes some of these files (the journal, the report and its side files,
the copies of an input that a resume reads again), so they are named here, below all of them,
and nowhere else.
"""

from __future__ import annotations

import fcntl
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, BinaryIO

from pipeline.core.errors import InputError

JOURNAL_NAME = "journal.sqlite"
#: The frame's copy in the run directory: what the run reads, and a resume reads again.
FRAME_FILE = "input.parquet"
#: A plan given to `apply_plan` as a frame, kept in the run directory as plan files are kept.
PLAN_FRAME_FILE = "plan-frame.csv"
#: The ids a job's query selected: the run's input.
IDS_FILE = "query-ids.csv"
#: The query a job ran, and what it selected.
QUERY_FILE = "query.json"


def default_run_dir(input_path: str | Path) -> Path:
    stem = "stdin" if str(input_path) == "-" else Path(input_path).stem
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    candidate = Path("runs") / f"{stamp}-{stem}"
    suffix = 2
    while candidate.exists():
        candidate = Path("runs") / f"{stamp}-{stem}-{suffix}"
        suffix += 1
    return candidate


def side_file_suffix(input_format: str | None) -> str:
    """The suffix of the files a run writes for its input (undo, failures): Parquet for a
    Parquet input, CSV for every other."""
    return ".parquet" if input_format == "parquet" else ".csv"


def failures_file(report_path: Path, suffix: str) -> Path:
    """The fix-and-rerun file, beside the report wherever that is."""
    return report_path.with_name(f"{report_path.stem}-failures{suffix}")


@dataclass(frozen=True)
class RunDir:
    """The files of one run directory, by what they are for."""

    path: Path

    @property
    def journal(self) -> Path:
        return self.path / JOURNAL_NAME

    @property
    def journal_draft(self) -> Path:
        """Where a new journal is made; it becomes `journal` once it holds its run's settings."""
        return self.path / f".{JOURNAL_NAME}.new"

    @property
    def stdin_copy(self) -> Path:
        return self.path / "stdin.csv"

    @property
    def frame(self) -> Path:
        return self.path / FRAME_FILE

    @property
    def plan_frame(self) -> Path:
        return self.path / PLAN_FRAME_FILE

    @property
    def apply_input(self) -> Path:
        """The plan's change rows, as the input `apply_plan` runs."""
        return self.path / "apply.csv"

    @property
    def query_ids(self) -> Path:
        return self.path / IDS_FILE

    @property
    def query_record(self) -> Path:
        return self.path / QUERY_FILE

    @property
    def report(self) -> Path:
        """The report's place unless --report names another."""
        return self.path / "report.csv"

    @property
    def html_report(self) -> Path:
        return self.path / "report.html"

    @property
    def plan(self) -> Path:
        return self.path / "plan.csv"

    def undo(self, suffix: str) -> Path:
        return self.path / f"undo{suffix}"

    def existing_undo(self) -> Path | None:
        """The undo file a session wrote, in whichever format."""
        return next((p for p in (self.undo(".csv"), self.undo(".parquet")) if p.is_file()), None)

    @property
    def _lock_path(self) -> Path:
        return self.path / ".lock"

    def copy_stdin(self, stdin: BinaryIO) -> Path:
        """Keep the rows piped in, so that the run can be resumed once stdin is gone."""
        self.path.mkdir(parents=True, exist_ok=True)
        with self.stdin_copy.open("wb") as copy:
            shutil.copyfileobj(stdin, copy)
        return self.stdin_copy

    def lock(self) -> IO[str]:
        """Take the run directory for this process; a second process on it is refused.

        The lock holds while the returned file is open.
        """
        lock_file = self._lock_path.open("a")
        try:
            fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock_file.close()
            raise InputError(f"{self.path} is in use by another mateo-bulk process") from None
        return lock_file

    def in_use(self) -> bool:
        """Whether a live process holds the run directory (its lock is taken)."""
        with self._lock_path.open("a") as probe:
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(probe, fcntl.LOCK_UN)
            return False
