"""What the HTML run report shows, read from a run's journal: the outcome counts, the
sessions with their counts over time, the before → after transitions and the rows not done
grouped by reason.

Everything is read with SQL aggregates (GROUP BY, a few example rows per reason), so a run of a
million rows costs seconds, never a million Python objects. The page itself is drawn by
`pipeline.stages.html_report`.
"""

from __future__ import annotations

import functools
import json
import re
import sqlite3
from collections.abc import Mapping
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.run_dir import RunDir, failures_file, side_file_suffix
from pipeline.stages.journal import Journal

#: Reasons shown in the failures section, most rows first; the rest are counted.
MAX_REASONS = 25
#: Example rows shown per reason.
MAX_EXAMPLES = 3
#: Transitions shown, most rows first; the rest are counted.
MAX_TRANSITIONS = 30
#: A message is cut to this many characters on the page (the CSV report has it whole).
MESSAGE_CHARS = 400
#: Outcomes that are not a problem: every other one (and an update with a difference) is
#: grouped by reason.
_DONE_OUTCOMES = ("updated", "unchanged", "planned")

_UUID = re.compile(r"\b[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}\b")
# A cell quoted as Python's repr() quotes it: in single quotes, or in double quotes when it
# holds a single quote. Other double quotes are a server's identifiers ("inbox"): kept.
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*'(?:[^\"\\]|\\.)*\"")
_NUMBER = re.compile(r"\d[\d,]*")


# Cached: a reason is usually shared by many rows (a server's message, a bad column), and SQLite
# asks for it once per row.
@functools.lru_cache(maxsize=65_536)
def reason_of(message: str | None) -> str:
    """A message with its row-specific parts (quoted cells, uuids, numbers) blanked, so that
    rows failing for one reason share it: "conversation_id is not a uuid: 'x1'" and "…: 'y'"."""
    if not message:
        return ""
    text = _QUOTED.sub("'…'", message[:MESSAGE_CHARS])
    text = _UUID.sub("<uuid>", text)
    return _NUMBER.sub("<n>", text)


# --- what the page shows, read from the journal ----------------------------------------------


@dataclass
class Session:
    """One session of the run (the first, or a resume), from the journal's events."""

    kind: str
    began: float
    ended: float
    #: How it ended: "stop", "finish", or None (still running, or the process was killed).
    end: str | None = None
    detail: str | None = None
    #: Cumulative counts at each point: time, requests, retries, 429s, rows.
    points: list[tuple[float, int, int, int, int]] = field(default_factory=list)

    @property
    def totals(self) -> tuple[int, int, int, int]:
        if not self.points:
            return (0, 0, 0, 0)
        _, requests, retries, limited, rows = self.points[-1]
        return requests, retries, limited, rows


@dataclass
class ReasonGroup:
    outcome: str
    http_status: int | None
    error_code: str | None
    reason: str
    rows: int
    examples: list[tuple[int, str, str | None]] = field(default_factory=list)


@dataclass
class RunFigures:
    """Everything the page shows about one run."""

    run_dir: Path
    meta: Mapping[str, Any]
    state: str
    total_rows: int
    counts: dict[str, int]
    differences: int
    sessions: list[Session] | None
    transitions: list[tuple[str, str | None, str | None, int]]
    more_transitions: tuple[int, int]
    reasons: list[ReasonGroup]
    more_reasons: tuple[int, int]
    files: dict[str, Path | None]


def collect_figures(
    journal: Journal,
    report_path: Path | None,
    undo_path: Path | None,
    failures_path: Path | None,
) -> RunFigures:
    meta = journal.meta()
    settings = meta.get("settings") or {}
    run_dir = journal.run_dir
    state = str(meta.get("state", "unknown"))
    if state == "running" and not journal.in_use():
        state = "stopped (process gone)"
    counts = {outcome.value: count for outcome, count in journal.counts().items()}
    if report_path is None:
        report_path = Path(settings["report"]) if settings.get("report") else None
        report_path = report_path or RunDir(run_dir).report
    suffix = side_file_suffix(meta.get("input_format"))
    if undo_path is None:
        undo_path = RunDir(run_dir).existing_undo()
    if failures_path is None:
        candidate = failures_file(report_path, suffix)
        failures_path = candidate if candidate.is_file() else None
    plan_path = RunDir(run_dir).plan
    planned = bool(settings.get("dry_run") or settings.get("plan_only"))
    with closing(_read_only(journal.path)) as connection:
        sessions = _sessions(connection)
        moved = "planned" if planned else "updated"
        known = journal.planned_changes() if planned else None
        kinds = _kinds(connection, moved) if known is None else _without_before(known)
        transitions, more_transitions = _transitions(kinds)
        reasons, more_reasons = _reasons(connection)
    return RunFigures(
        run_dir=run_dir,
        meta=meta,
        state=state,
        total_rows=int(meta.get("rows") or 0),
        counts=counts,
        # Only updated rows can have a difference: a run with none (a dry run) needs no scan.
        differences=journal.differences() if counts.get("updated") else 0,
        sessions=sessions,
        transitions=transitions,
        more_transitions=more_transitions,
        reasons=reasons,
        more_reasons=more_reasons,
        files={
            "report": report_path if report_path.is_file() else None,
            "failures": failures_path,
            "undo": undo_path,
            "plan": plan_path if plan_path.is_file() else None,
        },
    )


def _read_only(path: Path) -> sqlite3.Connection:
    # A connection of its own, read-only: the page never changes the journal, and a run that is
    # still going (`mateo-bulk report` on it) keeps writing undisturbed.
    connection = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    connection.create_function("reason_of", 1, reason_of, deterministic=True)
    return connection


def _sessions(connection: sqlite3.Connection) -> list[Session] | None:
    """The run's sessions with their counts over time; None for a journal written before
    mateo-bulk recorded them (no events table)."""
    try:
        cursor = connection.execute(
            "SELECT time, kind, requests, retries, rate_limited, rows, detail FROM events "
            "ORDER BY rowid"
        )
    except sqlite3.OperationalError:
        return None
    sessions: list[Session] = []
    for moment, kind, requests, retries, limited, rows, detail in cursor:
        if kind in ("start", "resume") or not sessions:
            sessions.append(Session(kind, moment, moment))
        session = sessions[-1]
        session.ended = max(session.ended, moment)
        session.points.append((moment, requests, retries, limited, rows))
        if kind in ("stop", "finish"):
            session.end, session.detail = kind, detail
    return sessions


def _transitions(
    kinds: dict[tuple[str, str | None], int],
) -> tuple[list[tuple[str, str | None, str | None, int]], tuple[int, int]]:
    """Field: before → after with the rows making it, most first; and (transitions, rows) more.

    `kinds`: rows per distinct change and before (`_kinds`). Before is None when it was not
    read (--no-snapshot, a dry run); a field already at its target is no transition. JSON null
    is shown as the input writes it: "null".
    """
    moves: dict[tuple[str, str | None, str | None], int] = {}
    for (change, before_text), rows in kinds.items():
        before = json.loads(before_text) if before_text else None
        for name, target in json.loads(change):
            after = "null" if target is None else str(target)
            old: str | None = None
            if isinstance(before, dict) and name in before:
                old = "null" if before[name] is None else str(before[name])
                if old.lower() == after.lower():
                    continue
            key = (str(name), old, after)
            moves[key] = moves.get(key, 0) + rows
    ranked = sorted(moves.items(), key=lambda item: (-item[1], item[0][0], str(item[0][1:])))
    shown = [(name, old, after, rows) for (name, old, after), rows in ranked[:MAX_TRANSITIONS]]
    rest = ranked[MAX_TRANSITIONS:]
    return shown, (len(rest), sum(rows for _, rows in rest))


#: Rows of the results table grouped by one query of `_kinds`.
_KINDS_RANGE = 5_000


def _without_before(changes: dict[str, int]) -> dict[tuple[str, str | None], int]:
    # A dry run's journal counted its planned rows per change as it recorded them (a second
    # of the page's time on a million rows); they have no before-values.
    return {(change, None): rows for change, rows in changes.items()}


def _kinds(connection: sqlite3.Connection, outcome: str) -> dict[tuple[str, str | None], int]:
    """The rows of `outcome` per distinct change and before."""
    # SQL counts the rows per distinct change and before (a few hundred kinds in a million
    # rows: changes and values before are drawn from the account's inboxes, agents and
    # statuses); only those kinds are parsed by the caller. Unpacking each row's JSON in SQL
    # instead costs several times more. One GROUP BY over a million rows sorts them all, on
    # disk; over ranges of row numbers (the table's key, so each range is read alone) each
    # sort stays small and in memory, and the counts of a few hundred kinds are added up
    # here: a dry run's page costs a second less.
    first, last = connection.execute("SELECT MIN(row), MAX(row) FROM results").fetchone()
    kinds: dict[tuple[str, str | None], int] = {}
    if first is None:
        return kinds
    for start in range(first, last + 1, _KINDS_RANGE):
        for change, before, rows in connection.execute(
            "SELECT change, before, COUNT(*) FROM results "
            "WHERE row >= ? AND row < ? AND outcome = ? GROUP BY change, before",
            (start, start + _KINDS_RANGE, outcome),
        ):
            kinds[change, before] = kinds.get((change, before), 0) + rows
    return kinds


def _reasons(connection: sqlite3.Connection) -> tuple[list[ReasonGroup], tuple[int, int]]:
    """Rows not done (and updates with a difference), grouped by outcome, status, code and
    reason, most rows first, with a few example rows each; and (reasons, rows) not shown."""
    done = ",".join(f"'{outcome}'" for outcome in _DONE_OUTCOMES)
    # One pass computes each row's reason into a temporary table; the grouping and the
    # examples read that, so the reason of a million rows is worked out once, not per query.
    connection.execute(
        f"""
        CREATE TEMP TABLE problems AS
        SELECT row, outcome, COALESCE(http_status, -1) AS status,
               COALESCE(error_code, '') AS code,
               reason_of(CASE WHEN outcome = 'updated' THEN difference ELSE error_message END)
                   AS reason
        FROM results
        WHERE outcome NOT IN ({done}) OR (outcome = 'updated' AND difference IS NOT NULL)
        """
    )
    groups = connection.execute(
        "SELECT outcome, status, code, reason, COUNT(*) AS rows FROM problems "
        "GROUP BY outcome, status, code, reason ORDER BY rows DESC, MIN(row)"
    )
    reasons = [
        ReasonGroup(outcome, None if status == -1 else status, code or None, reason, rows)
        for outcome, status, code, reason, rows in groups.fetchmany(MAX_REASONS)
    ]
    more = rest = 0
    for *_, rows in groups:
        more += 1
        rest += rows
    if not reasons:
        return reasons, (more, rest)
    keys = {
        (r.outcome, -1 if r.http_status is None else r.http_status, r.error_code or "", r.reason): r
        for r in reasons
    }
    connection.execute(
        "CREATE TEMP TABLE shown (outcome TEXT, status INTEGER, code TEXT, reason TEXT)"
    )
    connection.executemany("INSERT INTO temp.shown VALUES (?, ?, ?, ?)", list(keys))
    examples = connection.execute(
        f"""
        SELECT picked.outcome, picked.status, picked.code, picked.reason, results.row,
               results.conversation_id,
               CASE WHEN results.outcome = 'updated' THEN results.difference
                    ELSE results.error_message END
        FROM (
            SELECT problems.*, ROW_NUMBER() OVER (
                PARTITION BY problems.outcome, problems.status, problems.code, problems.reason
                ORDER BY problems.row) AS rank
            FROM problems JOIN temp.shown USING (outcome, status, code, reason)
        ) AS picked JOIN results ON results.row = picked.row
        WHERE picked.rank <= {MAX_EXAMPLES}
        ORDER BY results.row
        """
    )
    for outcome, status, code, reason, row, conversation_id, message in examples:
        keys[(outcome, status, code, reason)].examples.append((row, conversation_id, message))
    return reasons, (more, rest)
