"""The HTML run report: one self-contained page per run that can be mailed, attached to a
ticket or printed, and opened anywhere without a network.

It shows the outcome counts, a timeline of requests (with 429s, retries, stops and resumes),
the before → after transitions, the rows not done grouped by reason, the settings, and the
commands to resume, retry the failures and undo. Everything is read from the run's journal
with SQL aggregates (GROUP BY, a few example rows per reason), so a run of a million rows
costs seconds, never a million Python objects.

Everything that comes from data — ids, cells of the input, error messages from a server,
settings — is escaped: a server's message is hostile input. The page carries no script, and
its Content-Security-Policy forbids loading anything, so even a slip could not run or fetch
anything. The journal holds no token, and neither does the page.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import shlex
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pipeline.core.run_dir import RunDir, failures_file, side_file_suffix
from pipeline.stages.journal import Journal

#: The suffix that asks `mateo-bulk report` for this page rather than a report of rows.
HTML_SUFFIX = ".html"
#: Reasons shown in the failures section, most rows first; the rest are counted.
MAX_REASONS = 25
#: Example rows shown per reason.
MAX_EXAMPLES = 3
#: Transitions shown, most rows first; the rest are counted.
MAX_TRANSITIONS = 30
#: A message is cut to this many characters on the page (the CSV report has it whole).
_MESSAGE_CHARS = 400

#: Outcomes in the order the page lists them, with their colours (the table beside the chart
#: carries every number, so colour is never the only cue).
_OUTCOME_COLOURS: dict[str, str] = {
    "updated": "#2e7d32",
    "unchanged": "#7d96a3",
    "planned": "#1565c0",
    "not_found": "#8d6e63",
    "rejected": "#c62828",
    "failed": "#e65100",
    "invalid": "#6a1b9a",
    "conflict": "#f9a825",
    "skipped": "#9e9e9e",
}
_PENDING = "no outcome yet"
_PENDING_COLOUR = "#d9dee2"
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
    text = _QUOTED.sub("'…'", message[:_MESSAGE_CHARS])
    text = _UUID.sub("<uuid>", text)
    return _NUMBER.sub("<n>", text)


def write_html_report(
    journal: Journal,
    path: Path,
    *,
    report_path: Path | None = None,
    undo_path: Path | None = None,
    failures_path: Path | None = None,
) -> Path:
    """Write the run's HTML report to `path` (whole, or not at all) and return it.

    `report_path`, `undo_path` and `failures_path` are the run's other files, when the caller
    knows them (the end of a run); otherwise they are looked for in the run directory.
    """
    data = _collect(journal, report_path, undo_path, failures_path)
    page = _render(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(page, encoding="utf-8")
    os.replace(partial, path)
    return path


# --- what the page shows, read from the journal ----------------------------------------------


@dataclass
class _Session:
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
class _Reason:
    outcome: str
    http_status: int | None
    error_code: str | None
    reason: str
    rows: int
    examples: list[tuple[int, str, str | None]] = field(default_factory=list)


@dataclass
class _Data:
    run_dir: Path
    meta: Mapping[str, Any]
    state: str
    total_rows: int
    counts: dict[str, int]
    differences: int
    sessions: list[_Session] | None
    transitions: list[tuple[str, str | None, str | None, int]]
    more_transitions: tuple[int, int]
    reasons: list[_Reason]
    more_reasons: tuple[int, int]
    files: dict[str, Path | None]


def _collect(
    journal: Journal,
    report_path: Path | None,
    undo_path: Path | None,
    failures_path: Path | None,
) -> _Data:
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
        transitions, more_transitions = _transitions(connection, moved)
        reasons, more_reasons = _reasons(connection)
    return _Data(
        run_dir=run_dir,
        meta=meta,
        state=state,
        total_rows=int(meta.get("rows") or 0),
        counts=counts,
        differences=journal.differences(),
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


def _sessions(connection: sqlite3.Connection) -> list[_Session] | None:
    """The run's sessions with their counts over time; None for a journal written before
    mateo-bulk recorded them (no events table)."""
    try:
        cursor = connection.execute(
            "SELECT time, kind, requests, retries, rate_limited, rows, detail FROM events "
            "ORDER BY rowid"
        )
    except sqlite3.OperationalError:
        return None
    sessions: list[_Session] = []
    for moment, kind, requests, retries, limited, rows, detail in cursor:
        if kind in ("start", "resume") or not sessions:
            sessions.append(_Session(kind, moment, moment))
        session = sessions[-1]
        session.ended = max(session.ended, moment)
        session.points.append((moment, requests, retries, limited, rows))
        if kind in ("stop", "finish"):
            session.end, session.detail = kind, detail
    return sessions


def _transitions(
    connection: sqlite3.Connection, outcome: str
) -> tuple[list[tuple[str, str | None, str | None, int]], tuple[int, int]]:
    """Field: before → after with the rows making it, most first; and (transitions, rows) more.

    Before is None when it was not read (--no-snapshot, a dry run); a field already at its
    target is no transition. JSON null is shown as the input writes it: "null".
    """
    # SQL counts the rows per distinct change and before (a few hundred kinds in a million
    # rows: changes and values before are drawn from the account's inboxes, agents and
    # statuses); only those kinds are parsed here. Unpacking each row's JSON in SQL instead
    # costs several times more.
    kinds = connection.execute(
        "SELECT change, before, COUNT(*) FROM results WHERE outcome = ? GROUP BY change, before",
        (outcome,),
    )
    moves: dict[tuple[str, str | None, str | None], int] = {}
    for change, before_text, rows in kinds:
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


def _reasons(connection: sqlite3.Connection) -> tuple[list[_Reason], tuple[int, int]]:
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
        _Reason(outcome, None if status == -1 else status, code or None, reason, rows)
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


# --- the page --------------------------------------------------------------------------------


def _e(value: object) -> str:
    """Any value as text safe inside an element or a quoted attribute."""
    return escape(str(value), quote=True)


def _render(data: _Data) -> str:
    settings = data.meta.get("settings") or {}
    title = f"mateo-bulk run report: {data.run_dir.name}"
    body = "\n".join(
        [
            _header(data, settings),
            _outcomes_section(data),
            _timeline_section(data),
            _transitions_section(data, settings),
            _reasons_section(data),
            _commands_section(data, settings),
            _files_section(data),
            _settings_section(data, settings),
        ]
    )
    return _PAGE.format(title=_e(title), style=_STYLE, body=body)


def _headline(data: _Data, settings: Mapping[str, Any]) -> str:
    counts, total = data.counts, data.total_rows
    if settings.get("dry_run"):
        return f"Dry run: {counts['planned']:,} of {total:,} rows would be sent"
    if settings.get("plan_only"):
        return f"Plan: {counts['planned']:,} of {total:,} rows to change"
    updated = counts["updated"] + counts["unchanged"]
    if data.state == "finished":
        word = "Finished"
    elif data.state == "running":
        word = "Running"
    else:
        word = "Stopped"
    return f"{word}: {updated:,} of {total:,} rows at their target"


def _header(data: _Data, settings: Mapping[str, Any]) -> str:
    meta = data.meta
    state = data.state
    if state == "stopped" and meta.get("stop_reason"):
        state = f"stopped: {meta['stop_reason']}"
    sessions = data.sessions or []
    requests = sum(session.totals[0] for session in sessions)
    retries = sum(session.totals[1] for session in sessions)
    limited = sum(session.totals[2] for session in sessions)
    active = sum(session.ended - session.began for session in sessions)
    tiles = [
        ("rows", f"{data.total_rows:,}"),
        ("requests", f"{requests:,}" if data.sessions else "not recorded"),
        ("retries", f"{retries:,}" if data.sessions else "not recorded"),
        ("429 answers", f"{limited:,}" if data.sessions else "not recorded"),
        ("time running", _duration(active) if data.sessions else "not recorded"),
        ("sessions", f"{len(sessions):,}" if data.sessions else "not recorded"),
    ]
    tile_html = "".join(
        f'<div class="tile"><span class="figure">{_e(value)}</span>'
        f'<span class="label">{_e(label)}</span></div>'
        for label, value in tiles
    )
    facts = [
        ("run directory", f"<code>{_e(data.run_dir.resolve())}</code>"),
        ("state", _e(state)),
        ("input", f"<code>{_e(meta.get('input', '?'))}</code>"),
        ("API", f"<code>{_e(settings.get('base_url', '?'))}</code>"),
    ]
    for key, label in (
        ("started_at", "started"),
        ("resumed_at", "last resumed"),
        ("stopped_at", "last stopped"),
        ("finished_at", "finished"),
    ):
        if meta.get(key):
            facts.append((label, _e(_when(meta[key]))))
    fact_html = "".join(f"<dt>{_e(label)}</dt><dd>{value}</dd>" for label, value in facts)
    state_class = "finished" if data.state == "finished" else "stopped"
    if data.state == "running":
        state_class = "running"
    return (
        f'<header class="{state_class}"><p class="kicker">mateo-bulk run report</p>'
        f"<h1>{_e(_headline(data, settings))}</h1>"
        f'<div class="tiles">{tile_html}</div><dl class="facts">{fact_html}</dl></header>'
    )


def _outcomes_section(data: _Data) -> str:
    items = [(name, data.counts.get(name, 0), colour) for name, colour in _OUTCOME_COLOURS.items()]
    pending = data.total_rows - sum(data.counts.values())
    if pending > 0:
        items.append((_PENDING, pending, _PENDING_COLOUR))
    total = max(1, sum(count for _, count, _ in items))
    shown = [item for item in items if item[1]]
    bar, x = [], 0.0
    for name, count, colour in shown:
        width = 1000 * count / total
        bar.append(
            f'<rect x="{x:.2f}" y="0" width="{width:.2f}" height="36" fill="{colour}">'
            f"<title>{_e(name)}: {count:,}</title></rect>"
        )
        x += width
    rows = []
    for name, count, colour in shown:
        share = count / total
        rows.append(
            f'<tr><th scope="row"><span class="swatch" style="background:{colour}"></span>'
            f'{_e(name)}</th><td class="num">{count:,}</td><td class="num">{share:.1%}</td>'
            f'<td class="barcell"><svg viewBox="0 0 100 10" preserveAspectRatio="none" '
            f'role="img" aria-label="{_e(name)} {share:.1%}"><rect width="{100 * share:.2f}" '
            f'height="10" fill="{colour}"/></svg></td></tr>'
        )
    note = ""
    if data.differences:
        note = (
            f'<p class="note">{data.differences:,} updated rows came back with values other than '
            "their target: see “Rows not done” and the report's <code>difference</code> "
            "column.</p>"
        )
    if not shown:
        return _section("outcomes", "Outcomes", "<p>No row has an outcome yet.</p>")
    return _section(
        "outcomes",
        "Outcomes",
        f'<svg class="stack" viewBox="0 0 1000 36" preserveAspectRatio="none" role="img" '
        f'aria-label="outcomes of {total:,} rows">{"".join(bar)}</svg>'
        f'<table class="outcomes"><thead><tr><th scope="col">outcome</th>'
        f'<th scope="col" class="num">rows</th><th scope="col" class="num">share</th>'
        f'<th scope="col"><span class="sr">chart</span></th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>{note}",
    )


# The timeline: the sessions are laid end to end (a stop of hours would otherwise flatten
# everything else), each cut into intervals of one width, chosen so that the whole run makes
# at most _MAX_INTERVALS bars.
_MAX_INTERVALS = 60
_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200)


def _interval(seconds: float) -> int:
    for step in _STEPS:
        if seconds / step <= _MAX_INTERVALS:
            return step
    return 86400 * math.ceil(seconds / 86400 / _MAX_INTERVALS)


def _buckets(session: _Session, width: int) -> list[list[int]]:
    """Per interval of the session: requests, retries, 429s and rows in it."""
    # A last sliver of under a quarter interval joins the interval before: not a bar of its own.
    count = max(1, math.ceil((session.ended - session.began) / width - 0.25))
    buckets = [[0, 0, 0, 0] for _ in range(count)]
    previous = (0, 0, 0, 0)
    last_moment = session.began
    for moment, *cumulative in session.points:
        # What a point adds happened since the one before: counted at the middle of that span,
        # not at its end (a whole interval late at the finest width).
        middle = (last_moment + moment) / 2
        last_moment = moment
        index = min(count - 1, int((middle - session.began) // width))
        for position, value in enumerate(cumulative):
            buckets[index][position] += max(0, value - previous[position])
        previous = (cumulative[0], cumulative[1], cumulative[2], cumulative[3])
    return buckets


def _timeline_section(data: _Data) -> str:
    sessions = data.sessions
    if not sessions:
        # No events table, or an empty one that a newer mateo-bulk added when it opened the
        # journal: the run was made by a version that did not record its requests over time.
        why = (
            "No timeline: this run's journal has no record of its requests over time (it was "
            "written by an earlier version of mateo-bulk). The counts below are complete."
        )
        return _section("timeline", "Timeline", f"<p>{_e(why)}</p>")
    width = _interval(sum(max(1.0, s.ended - s.began) for s in sessions))
    per_session = [_buckets(session, width) for session in sessions]
    # Two drawings of one chart: a wide one, and a narrow one whose text stays legible when a
    # phone shrinks it to its width; the style shows one of them (no script needed).
    figure = _timeline_svg(sessions, per_session, width, view_width=720) + _timeline_svg(
        sessions, per_session, width, view_width=360
    )
    peak = max((bucket[0] for buckets in per_session for bucket in buckets), default=0)
    legend = (
        '<p class="legend"><span class="swatch" style="background:#1565c0"></span>requests '
        f'per {_e(_duration(width))} <span class="swatch" style="background:#c62828"></span>'
        '429 answers <span class="swatch" style="background:#e65100"></span>retries '
        '<span class="swatch line"></span>stop / resume'
        f" · busiest interval: {peak:,} requests ({peak / width:,.2f}/s)</p>"
    )
    rows = []
    for number, session in enumerate(sessions, 1):
        requests, retries, limited, done = session.totals
        if session.end == "finish":
            ended = "finished"
        elif session.end == "stop":
            ended = f"stopped: {session.detail or '?'}"
        else:
            ended = "no end recorded (still running, or the process was killed)"
        rows.append(
            f"<tr><td>{number}</td><td>{_e(session.kind)}</td>"
            f'<td class="when">{_e(_clock(session.began))}</td>'
            f'<td class="num">{_e(_duration(session.ended - session.began))}</td>'
            f'<td class="num">{requests:,}</td><td class="num">{retries:,}</td>'
            f'<td class="num">{limited:,}</td><td class="num">{done:,}</td>'
            f'<td class="wrap">{_e(ended)}</td></tr>'
        )
    table = (
        '<div class="scroll"><table class="sessions"><thead><tr><th>#</th><th>session</th>'
        '<th>began (UTC)</th><th class="num">took</th><th class="num">requests</th>'
        '<th class="num">retries</th><th class="num">429s</th><th class="num">rows recorded</th>'
        f"<th>how it ended</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )
    return _section("timeline", "Timeline", f'<div class="scroll">{figure}</div>{legend}{table}')


def _timeline_svg(
    sessions: Sequence[_Session],
    per_session: Sequence[list[list[int]]],
    width: int,
    *,
    view_width: int,
) -> str:
    narrow = view_width < 600
    left, right, top, plot = 52, 14, 34, 150
    lane, lanes_top = 20, 34 + 150 + 10
    view_height = lanes_top + 2 * lane + 30
    intervals = sum(len(buckets) for buckets in per_session)
    step = (view_width - left - right) / intervals
    peak = max((bucket[0] for buckets in per_session for bucket in buckets), default=0)
    scale = _nice_ceiling(peak)
    limited_peak = max((b[2] for buckets in per_session for b in buckets), default=0)
    retry_peak = max((b[1] for buckets in per_session for b in buckets), default=0)
    parts = [
        f'<line class="axis" x1="{left}" y1="{top + plot}" x2="{view_width - right}" '
        f'y2="{top + plot}"/>',
        f'<line class="grid" x1="{left}" y1="{top}" x2="{view_width - right}" y2="{top}"/>',
        f'<text class="tick" x="{left - 6}" y="{top + 4}" text-anchor="end">{scale:,}</text>',
        f'<text class="tick" x="{left - 6}" y="{top + plot + 4}" text-anchor="end">0</text>',
        f'<text class="tick" x="{left - 6}" y="{lanes_top + 14}" text-anchor="end">429</text>',
        f'<text class="tick" x="{left - 6}" y="{lanes_top + lane + 14}" '
        'text-anchor="end">retries</text>',
    ]
    index = 0
    last_label = -1e9
    span = sessions[-1].ended - sessions[0].began
    for number, (session, buckets) in enumerate(zip(sessions, per_session, strict=True)):
        x0 = left + index * step
        if number:
            label = f"resumed {_clock(session.began)}"
            previous = sessions[number - 1]
            if previous.end == "stop":
                label = f"stopped · resumed {_duration(session.began - previous.ended)} later"
            if narrow:
                label = "stop · resume" if previous.end == "stop" else "resume"
            share = index / intervals
            parts.append(
                _marker(x0, top, lanes_top + 2 * lane, label, previous.detail, share=share)
            )
        # A clock time under each session's start, unless it would run into its neighbours.
        if x0 - last_label > 110 and view_width - right - x0 > 230:
            parts.append(
                f'<text class="tick" x="{x0:.1f}" y="{view_height - 8}">'
                f"{_e(_axis_clock(session.began, span))}</text>"
            )
            last_label = x0
        for offset, (requests, retries, limited, _rows) in enumerate(buckets):
            x = left + (index + offset) * step
            start = session.began + offset * width
            when = f"{_clock(start)} +{_duration(width)}"
            if requests:
                height = plot * requests / scale
                parts.append(
                    f'<rect class="req" x="{x + step * 0.1:.2f}" y="{top + plot - height:.2f}" '
                    f'width="{max(step * 0.8, 0.8):.2f}" height="{height:.2f}">'
                    f"<title>{_e(when)}: {requests:,} requests</title></rect>"
                )
            for value, peak_value, y, css, what in (
                (limited, limited_peak, lanes_top, "lim", "429 answers"),
                (retries, retry_peak, lanes_top + lane, "retry", "retries"),
            ):
                if value:
                    height = max(3.0, (lane - 4) * value / peak_value)
                    parts.append(
                        f'<rect class="{css}" x="{x + step * 0.1:.2f}" '
                        f'y="{y + lane - 2 - height:.2f}" width="{max(step * 0.8, 2):.2f}" '
                        f'height="{height:.2f}"><title>{_e(when)}: {value:,} {what}</title></rect>'
                    )
        index += len(buckets)
    last = sessions[-1]
    if last.end == "stop":
        parts.append(
            _marker(view_width - right, top, lanes_top + 2 * lane, "stopped", last.detail, share=1)
        )
    parts.append(
        f'<text class="tick" x="{view_width - right}" y="{view_height - 8}" '
        f'text-anchor="end">{_e(_axis_clock(last.ended, span))} UTC</text>'
    )
    parts.append(f'<text class="tick" x="{left}" y="14">requests per {_e(_duration(width))}</text>')
    return (
        f'<svg class="timeline {"narrow" if narrow else "wide"}" '
        f'viewBox="0 0 {view_width} {view_height}" role="img" '
        f'aria-label="requests per {_e(_duration(width))} over the run">{"".join(parts)}</svg>'
    )


def _marker(
    x: float, top: float, bottom: float, label: str, detail: str | None, *, share: float
) -> str:
    """A dashed line across the chart at a stop or resume; `share`: how far along it is, which
    decides which way its label runs so that it stays inside the chart."""
    tooltip = label + (f": {detail}" if detail else "")
    anchor = "end" if share > 0.6 else "start" if share < 0.25 else "middle"
    return (
        f'<g class="marker"><title>{_e(tooltip)}</title>'
        f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{bottom}"/>'
        f'<text x="{x:.1f}" y="{top - 10}" text-anchor="{anchor}">{_e(label)}</text></g>'
    )


def _nice_ceiling(value: int) -> int:
    """The smallest of 1, 2, 5 × 10^k at or above value: an axis label a reader takes in."""
    if value <= 1:
        return 1
    power = 10 ** int(math.log10(value))
    for factor in (1, 2, 5, 10):
        if factor * power >= value:
            return factor * power
    return 10 * power


def _transitions_section(data: _Data, settings: Mapping[str, Any]) -> str:
    planned = bool(settings.get("dry_run") or settings.get("plan_only"))
    title = "Changes planned: before → after" if planned else "Changes made: before → after"
    which = "planned" if planned else "updated"
    if not data.transitions:
        return _section("transitions", title, f"<p>No {_e(which)} row changes a field.</p>")
    rows = "".join(
        f'<tr><td class="field"><code>{_e(name)}</code></td>'
        f'<td class="value before">{_value(before)}</td>'
        f'<td class="arrow" aria-hidden="true">→</td>'
        f'<td class="value after">{_value(after)}</td><td class="num">{count:,}</td></tr>'
        for name, before, after, count in data.transitions
    )
    more, rest = data.more_transitions
    tail = ""
    if more:
        tail = f'<p class="note">and {more:,} more transitions ({rest:,} rows).</p>'
    unknown = ""
    if any(before is None for _, before, _, _ in data.transitions):
        unknown = (
            '<p class="note">“not read”: the value before was not read (a dry run, or '
            "<code>--no-snapshot</code> without <code>expect_*</code> columns).</p>"
        )
    return _section(
        "transitions",
        title,
        f"<p>Each {_e(which)} row, per field it changes; a field already at its target is not "
        "counted.</p>"
        '<div class="scroll"><table class="transitions"><thead><tr><th>field</th>'
        '<th>before</th><th><span class="sr">to</span></th><th>after</th>'
        f'<th class="num">rows</th></tr></thead><tbody>{rows}</tbody></table></div>'
        f"{tail}{unknown}",
    )


def _value(value: str | None) -> str:
    if value is None:
        return '<span class="muted">not read</span>'
    if value == "null":
        return '<span class="muted">null (none)</span>'
    return f"<code>{_e(value)}</code>"


def _reasons_section(data: _Data) -> str:
    title = "Rows not done, by reason"
    if not data.reasons:
        return _section(
            "reasons",
            title,
            "<p>None: every row with an outcome is done (updated, unchanged "
            "or planned) with no difference.</p>",
        )
    blocks = []
    for reason in data.reasons:
        tags = [
            f'<span class="badge" style="background:{_colour(reason.outcome)}">'
            f"{_e(reason.outcome)}</span>"
        ]
        if reason.outcome == "updated":
            tags.append('<span class="tag">with a difference</span>')
        if reason.http_status is not None:
            tags.append(f'<span class="tag">HTTP {reason.http_status}</span>')
        if reason.error_code:
            tags.append(f'<span class="tag"><code>{_e(reason.error_code)}</code></span>')
        # A row's own message is shown only when it says more than the reason above it.
        examples = "".join(
            f'<li><span class="row">row {row:,}</span> <code class="id">{_e(identifier)}</code>'
            + (
                f' <span class="message">{_e(_cut(message))}</span>'
                if message and message != reason.reason
                else ""
            )
            + "</li>"
            for row, identifier, message in reason.examples
        )
        label = "example" if len(reason.examples) == 1 else f"first {len(reason.examples)}"
        blocks.append(
            f'<article class="reason"><h3>{"".join(tags)}<span class="count">'
            f"{_rows(reason.rows)}</span></h3>"
            f'<p class="pattern">{_e(reason.reason or "(no message)")}</p>'
            f'<p class="muted small">{_e(label)}:</p><ul class="examples">{examples}</ul>'
            "</article>"
        )
    more, rest = data.more_reasons
    tail = ""
    if more:
        tail = (
            f'<p class="note">and {more:,} more reasons ({rest:,} rows): every row is in the '
            "CSV report.</p>"
        )
    intro = (
        "<p>Rows not done, and updated rows that came back with a difference, grouped by "
        "outcome, HTTP status, error code and message (with the parts that name a row — quoted "
        "cells, ids, numbers — blanked), most rows first.</p>"
    )
    return _section("reasons", title, intro + "".join(blocks) + tail)


def _rows(count: int) -> str:
    return f"{count:,} row" if count == 1 else f"{count:,} rows"


def _colour(outcome: str) -> str:
    return _OUTCOME_COLOURS.get(outcome, _PENDING_COLOUR)


def _cut(message: str) -> str:
    if len(message) <= _MESSAGE_CHARS:
        return message
    return message[:_MESSAGE_CHARS] + f"… ({len(message):,} characters)"


def _commands_section(data: _Data, settings: Mapping[str, Any]) -> str:
    run_dir = shlex.quote(str(data.run_dir.resolve()))
    counts = data.counts
    items: list[tuple[str, str | None, str]] = []
    sandbox = _loopback(str(settings.get("base_url", "")))
    again = (
        "Its API was on this machine; if that was the bundled sandbox (<code>--sandbox</code>), "
        "it ended with the run: add <code>--sandbox</code> to continue against a fresh one."
        if sandbox
        else ""
    )
    token = "With the same account's token in <code>MATEO_API_TOKEN</code> (or "
    token += "<code>--token-file PATH</code>). "
    if settings.get("dry_run"):
        items.append(
            (
                "Resume",
                None,
                "A dry run sends nothing and cannot be resumed: start the real run with "
                f"<code>mateo-bulk run {_e(shlex.quote(str(data.meta.get('input', 'INPUT'))))}"
                "</code>.",
            )
        )
    else:
        open_rows = counts["skipped"] + max(0, data.total_rows - sum(counts.values()))
        if data.state == "finished" and not open_rows:
            why = "The run finished: every row has an outcome, so resume sends nothing more."
        elif data.state == "running":
            why = (
                f"The run is still going ({open_rows:,} rows not done yet): another process "
                "holds it, and resume is refused until that one stops."
            )
        else:
            why = (
                f"Sends the {open_rows:,} rows not done yet (skipped, or never reached); rows "
                "in flight at the stop are read first."
            )
        items.append(("Resume", f"mateo-bulk resume {run_dir}", f"{why} {token}{again}"))
        failed = counts["failed"]
        items.append(
            (
                "Retry the failures",
                f"mateo-bulk resume {run_dir} --retry-failed",
                (
                    f"Also sends the {failed:,} <code>failed</code> rows again. "
                    if failed
                    else "No row failed, so there is nothing to retry. "
                )
                + "Rejected rows need their data fixed first: they are in the failures file.",
            )
        )
    undo = data.files.get("undo")
    if undo is not None:
        command = f"mateo-bulk run {shlex.quote(str(undo.resolve()))}"
        items.append(
            (
                "Undo",
                command,
                "Puts every row this run changed back to its values before the run; a row "
                "someone changed since is left alone (conflict). " + token,
            )
        )
    else:
        items.append(("Undo", None, _e(_no_undo(data, settings))))
    plan = data.files.get("plan")
    if settings.get("plan_only") and plan is not None:
        items.append(
            (
                "Apply the plan",
                f"mateo-bulk apply {shlex.quote(str(plan.resolve()))}",
                "Sends exactly the plan's change rows, each guarded by the values it was "
                "planned from. " + token,
            )
        )
    blocks = "".join(
        f'<div class="command"><h3>{_e(name)}</h3>'
        + (f"<pre><code>{_e(command)}</code></pre>" if command else "")
        + f"<p>{note}</p></div>"
        for name, command, note in items
    )
    return _section("commands", "What to run next", blocks)


def _no_undo(data: _Data, settings: Mapping[str, Any]) -> str:
    counts = data.counts
    if settings.get("dry_run"):
        return "No undo file: a dry run changes nothing."
    if settings.get("plan_only"):
        return "No undo file: a plan changes nothing (applying it writes one)."
    if not counts["updated"] and not counts["failed"]:
        return "No undo file: this run has changed no rows (yet)."
    if not settings.get("snapshot", True):
        return (
            "No undo file: the rows' values before the run are not known (--no-snapshot "
            "without expect_* columns), so mateo-bulk cannot undo this run."
        )
    if data.state != "finished" and data.state != "stopped":
        return (
            "No undo file yet: it is written when a session ends, and this one has not "
            "(still running, or the process was killed: resume it)."
        )
    return "No undo file: no changed row has values before the run to restore."


def _loopback(base_url: str) -> bool:
    try:
        host = urlsplit(base_url).hostname or ""
    except ValueError:
        return False
    return host in ("localhost", "::1") or host.startswith("127.")


def _files_section(data: _Data) -> str:
    names = {
        "report": "the report: one line per input row",
        "failures": "failed, rejected and invalid rows, as an input file to fix and run again",
        "undo": "the undo file",
        "plan": "the plan",
    }
    items = "".join(
        f"<li><code>{_e(path.resolve())}</code> — {_e(names[key])}</li>"
        for key, path in data.files.items()
        if path is not None
    )
    if not items:
        items = "<li>none written yet</li>"
    return _section("files", "Files", f"<ul>{items}</ul>")


def _settings_section(data: _Data, settings: Mapping[str, Any]) -> str:
    run_facts = {
        key: data.meta[key]
        for key in (
            "input",
            "input_format",
            "rows",
            "state",
            "stop_reason",
            "started_at",
            "resumed_at",
            "resume_overrides",
            "stopped_at",
            "finished_at",
        )
        if data.meta.get(key) not in (None, "", {})
    }
    return _section(
        "settings",
        "Settings",
        "<p>As the run was started (a resume may change how the rest is sent: "
        "<code>resume_overrides</code>). No token is kept.</p>"
        f"{_key_values(settings.items())}<h3>The run</h3>{_key_values(run_facts.items())}",
    )


def _key_values(pairs: Iterable[tuple[str, Any]]) -> str:
    rows = "".join(
        f'<tr><th scope="row"><code>{_e(key)}</code></th><td class="wrap">{_e(_show(value))}</td>'
        "</tr>"
        for key, value in sorted(pairs)
    )
    return f'<div class="scroll"><table class="settings"><tbody>{rows}</tbody></table></div>'


def _show(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)


def _section(anchor: str, title: str, content: str) -> str:
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>{content}</section>'


def _when(text: object) -> str:
    if not isinstance(text, str):
        return "?"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _clock(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _axis_clock(moment: float, span: float) -> str:
    """A time under the timeline: to the second for a run of hours, with the day for longer."""
    when = datetime.fromtimestamp(moment, UTC)
    return when.strftime("%H:%M:%S" if span < 6 * 3600 else "%m-%d %H:%M")


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 10:
        return f"{seconds:.1f} s".replace(".0 s", " s")
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 600:
        minutes, rest = divmod(round(seconds), 60)
        return f"{minutes} min" + (f" {rest} s" if rest else "")
    if seconds < 3600:
        return f"{round(seconds / 60)} min"
    if seconds < 86400:
        hours, rest = divmod(round(seconds / 60), 60)
        return f"{hours} h" + (f" {rest} min" if rest else "")
    days, rest = divmod(round(seconds / 3600), 24)
    return f"{days} d" + (f" {rest} h" if rest else "")


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<meta name="referrer" content="no-referrer">
<title>{title}</title>
<style>{style}</style>
</head>
<body>
<main>
{body}
<footer>Written by mateo-bulk from the run's journal. Every number here is in the CSV report,
row by row.</footer>
</main>
</body>
</html>
"""

_STYLE = """
:root { --ink: #1d2327; --muted: #5b6770; --line: #d5dbe0; --card: #ffffff; --page: #f3f5f7;
  --blue: #1565c0; --red: #c62828; --orange: #e65100; }
* { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { margin: 0; background: var(--page); color: var(--ink);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  sans-serif; }
main { max-width: 1040px; margin: 0 auto; padding: 16px; }
header, section { background: var(--card); border: 1px solid var(--line); border-radius: 8px;
  padding: 16px 20px; margin: 0 0 16px; }
header { border-top: 6px solid #2e7d32; }
header.stopped { border-top-color: var(--orange); }
header.running { border-top-color: var(--blue); }
.kicker { margin: 0; color: var(--muted); font-size: 13px; text-transform: uppercase;
  letter-spacing: .06em; }
h1 { font-size: 26px; line-height: 1.25; margin: 4px 0 12px; }
h2 { font-size: 19px; margin: 0 0 10px; }
h3 { font-size: 15px; margin: 12px 0 6px; }
p { margin: 6px 0; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono",
  monospace; font-size: 13px; }
code { overflow-wrap: anywhere; }
pre { background: #f6f8fa; border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px;
  margin: 6px 0; white-space: pre-wrap; overflow-wrap: anywhere; }
.tiles { display: grid; grid-template-columns: repeat(auto-fit, minmax(130px, 1fr)); gap: 8px;
  margin: 8px 0 12px; }
.tile { border: 1px solid var(--line); border-radius: 6px; padding: 8px 10px; }
.figure { display: block; font-size: 21px; font-weight: 600; }
.label { color: var(--muted); font-size: 13px; }
.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; margin: 0; }
.facts dt { color: var(--muted); }
.facts dd { margin: 0; overflow-wrap: anywhere; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line);
  vertical-align: top; }
thead th { font-size: 13px; color: var(--muted); font-weight: 600; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.wrap { overflow-wrap: anywhere; }
.scroll { overflow-x: auto; }
.stack { display: block; width: 100%; height: 36px; border-radius: 4px; margin: 4px 0 10px; }
.outcomes th[scope=row] { font-weight: 500; white-space: nowrap; }
.barcell { width: 40%; }
.barcell svg { display: block; width: 100%; height: 12px; background: #eef1f3; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px;
  margin: 0 6px 0 0; vertical-align: -1px; }
.swatch.line { width: 2px; height: 14px; background: #37474f; margin-left: 8px; }
.legend { font-size: 13px; color: var(--muted); }
.legend .swatch { margin-left: 8px; }
.timeline { display: block; width: 100%; height: auto; }
.timeline.narrow { display: none; }
.timeline .req { fill: var(--blue); }
.timeline .lim { fill: var(--red); }
.timeline .retry { fill: var(--orange); }
.timeline .axis { stroke: #37474f; stroke-width: 1; }
.timeline .grid { stroke: var(--line); stroke-dasharray: 3 3; }
.timeline .tick { font-size: 13px; fill: var(--muted); }
.timeline .marker line { stroke: #37474f; stroke-width: 1.5; stroke-dasharray: 5 3; }
.timeline .marker text { font-size: 13px; fill: var(--ink); }
.sessions { margin-top: 10px; font-size: 14px; }
.sessions .when { white-space: nowrap; }
.sessions .wrap { min-width: 16em; }
.transitions .value { overflow-wrap: anywhere; }
.transitions .arrow { color: var(--muted); padding: 5px 2px; }
.muted { color: var(--muted); }
.small { font-size: 13px; }
.note { color: var(--muted); font-size: 14px; }
.reason { border: 1px solid var(--line); border-radius: 6px; padding: 8px 12px; margin: 10px 0;
  break-inside: avoid; }
.reason h3 { display: flex; flex-wrap: wrap; gap: 6px; align-items: center; margin: 2px 0 4px; }
.reason .count { margin-left: auto; font-variant-numeric: tabular-nums; }
.badge { color: #fff; border-radius: 4px; padding: 1px 8px; font-size: 13px; }
.tag { border: 1px solid var(--line); border-radius: 4px; padding: 0 6px; font-size: 13px;
  font-weight: 500; }
.pattern { overflow-wrap: anywhere; font-weight: 500; }
.examples { margin: 4px 0; padding-left: 18px; font-size: 14px; }
.examples li { overflow-wrap: anywhere; margin: 2px 0; }
.examples .row { color: var(--muted); white-space: nowrap; }
.examples .message { display: block; color: var(--muted); }
.command h3 { margin-top: 14px; }
.sr { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); }
footer { color: var(--muted); font-size: 13px; text-align: center; padding: 8px 0 24px; }
@media (max-width: 600px) {
  main { padding: 8px; }
  header, section { padding: 12px; border-radius: 6px; }
  h1 { font-size: 21px; }
  .facts { grid-template-columns: 1fr; }
  .facts dd { margin-bottom: 6px; }
  .barcell { width: 30%; }
  th, td { padding: 4px 5px; }
  .timeline.wide { display: none; }
  .timeline.narrow { display: block; }
  /* A transition is a small card: field and rows, then before, then → after; four columns
     of 36-character ids do not fit a phone. */
  .transitions thead { display: none; }
  .transitions tr { display: grid; grid-template-columns: auto 1fr auto;
    grid-template-areas: "field field rows" "before before before" "arrow after after";
    border-bottom: 1px solid var(--line); padding: 4px 0; }
  .transitions td { border: none; padding: 1px 4px; }
  .transitions .field { grid-area: field; font-weight: 600; }
  .transitions .before { grid-area: before; }
  .transitions .arrow { grid-area: arrow; }
  .transitions .after { grid-area: after; }
  .transitions .num { grid-area: rows; }
}
@media print {
  body { background: #fff; font-size: 11pt; }
  main { max-width: none; padding: 0; }
  header, section { border: none; border-radius: 0; padding: 0; margin: 0 0 14pt;
    break-inside: avoid-page; }
  header { border-top: 4pt solid #2e7d32; padding-top: 6pt; }
  .reason, tr, .command { break-inside: avoid; }
  .scroll { overflow: visible; }
  .timeline.wide { display: block; }
  .timeline.narrow { display: none; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  pre { white-space: pre-wrap; }
}
"""
