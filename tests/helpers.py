"""Shared helpers for tests that run mateo-bulk against the sandbox."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "sample_data"
COLUMNS = ("conversation_id", "inbox_id", "assignee_id", "status")


def read_ids(name: str) -> list[str]:
    with (SAMPLE / name).open(newline="", encoding="utf-8") as file:
        return [row["id"] for row in csv.DictReader(file)]


INBOXES = read_ids("inboxes.csv")
AGENTS = read_ids("agents.csv")


def write_csv(
    path: Path, rows: Iterable[Mapping[str, str]], columns: Sequence[str] = COLUMNS
) -> Path:
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({column: row.get(column, "") for column in columns})
    return path


def read_report(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def run_cli(
    *args: str | os.PathLike[str],
    token: str | None = None,
    cwd: Path | None = None,
    stdin: bytes | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run `python -m pipeline ARGS` as a user would, with only the token we give it."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("MATEO_API_TOKEN", "MATEO_BASE_URL")
    }
    if token is not None:
        env["MATEO_API_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *map(str, args)],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )
