"""The HTML run report: one self-contained page per run that can be mailed, attached to a
ticket or printed, and opened anywhere without a network.

It shows the outcome counts, a timeline of requests (with 429s, retries, stops and resumes),
the before → after transitions, the rows not done grouped by reason, the settings, and the
commands to resume, retry the failures and undo. Everything is read from the run's journal
with SQL aggregates (GROUP BY, a few example rows per reason), so a run of a million rows
costs seconds, never a million Python objects (`run_figures` reads them; `html_timeline`,
`html_commands` and `html_markup` draw the timeline, the closing sections and the page).

Everything that comes from data — ids, cells of the input, error messages from a server,
settings — is escaped: a server's message is hostile input. The page carries no script, and
its Content-Security-Policy forbids loading anything, so even a slip could not run or fetch
anything. The journal holds no token, and neither does the page.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.stages.html_commands import commands_section, files_section, settings_section
from pipeline.stages.html_markup import PAGE, STYLE, duration, escaped, section, when
from pipeline.stages.html_timeline import timeline_section
from pipeline.stages.journal import Journal
from pipeline.stages.run_figures import MESSAGE_CHARS, RunFigures, collect_figures

#: The suffix that asks `mateo-bulk report` for this page rather than a report of rows.
HTML_SUFFIX = ".html"
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
    data = collect_figures(journal, report_path, undo_path, failures_path)
    page = _render(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(page, encoding="utf-8")
    os.replace(partial, path)
    return path


# --- the page --------------------------------------------------------------------------------


def _render(data: RunFigures) -> str:
    settings = data.meta.get("settings") or {}
    title = f"mateo-bulk run report: {data.run_dir.name}"
    body = "\n".join(
        [
            _header(data, settings),
            _outcomes_section(data),
            timeline_section(data),
            _transitions_section(data, settings),
            _reasons_section(data),
            commands_section(data, settings),
            files_section(data),
            settings_section(data, settings),
        ]
    )
    return PAGE.format(title=escaped(title), style=STYLE, body=body)


def _headline(data: RunFigures, settings: Mapping[str, Any]) -> str:
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


def _header(data: RunFigures, settings: Mapping[str, Any]) -> str:
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
        ("time running", duration(active) if data.sessions else "not recorded"),
        ("sessions", f"{len(sessions):,}" if data.sessions else "not recorded"),
    ]
    tile_html = "".join(
        f'<div class="tile"><span class="figure">{escaped(value)}</span>'
        f'<span class="label">{escaped(label)}</span></div>'
        for label, value in tiles
    )
    facts = [
        ("run directory", f"<code>{escaped(data.run_dir.resolve())}</code>"),
        ("state", escaped(state)),
        ("input", f"<code>{escaped(meta.get('input', '?'))}</code>"),
        ("API", f"<code>{escaped(settings.get('base_url', '?'))}</code>"),
    ]
    for key, label in (
        ("started_at", "started"),
        ("resumed_at", "last resumed"),
        ("stopped_at", "last stopped"),
        ("finished_at", "finished"),
    ):
        if meta.get(key):
            facts.append((label, escaped(when(meta[key]))))
    fact_html = "".join(f"<dt>{escaped(label)}</dt><dd>{value}</dd>" for label, value in facts)
    state_class = "finished" if data.state == "finished" else "stopped"
    if data.state == "running":
        state_class = "running"
    return (
        f'<header class="{state_class}"><p class="kicker">mateo-bulk run report</p>'
        f"<h1>{escaped(_headline(data, settings))}</h1>"
        f'<div class="tiles">{tile_html}</div><dl class="facts">{fact_html}</dl></header>'
    )


def _outcomes_section(data: RunFigures) -> str:
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
            f"<title>{escaped(name)}: {count:,}</title></rect>"
        )
        x += width
    rows = []
    for name, count, colour in shown:
        share = count / total
        rows.append(
            f'<tr><th scope="row"><span class="swatch" style="background:{colour}"></span>'
            f'{escaped(name)}</th><td class="num">{count:,}</td><td class="num">{share:.1%}</td>'
            f'<td class="barcell"><svg viewBox="0 0 100 10" preserveAspectRatio="none" '
            f'role="img" aria-label="{escaped(name)} {share:.1%}"><rect width="{100 * share:.2f}" '
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
        return section("outcomes", "Outcomes", "<p>No row has an outcome yet.</p>")
    return section(
        "outcomes",
        "Outcomes",
        f'<svg class="stack" viewBox="0 0 1000 36" preserveAspectRatio="none" role="img" '
        f'aria-label="outcomes of {total:,} rows">{"".join(bar)}</svg>'
        f'<table class="outcomes"><thead><tr><th scope="col">outcome</th>'
        f'<th scope="col" class="num">rows</th><th scope="col" class="num">share</th>'
        f'<th scope="col"><span class="sr">chart</span></th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table>{note}",
    )


def _transitions_section(data: RunFigures, settings: Mapping[str, Any]) -> str:
    planned = bool(settings.get("dry_run") or settings.get("plan_only"))
    title = "Changes planned: before → after" if planned else "Changes made: before → after"
    which = "planned" if planned else "updated"
    if not data.transitions:
        return section("transitions", title, f"<p>No {escaped(which)} row changes a field.</p>")
    rows = "".join(
        f'<tr><td class="field"><code>{escaped(name)}</code></td>'
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
    return section(
        "transitions",
        title,
        f"<p>Each {escaped(which)} row, per field it changes; a field already at its target is not "
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
    return f"<code>{escaped(value)}</code>"


def _reasons_section(data: RunFigures) -> str:
    title = "Rows not done, by reason"
    if not data.reasons:
        return section(
            "reasons",
            title,
            "<p>None: every row with an outcome is done (updated, unchanged "
            "or planned) with no difference.</p>",
        )
    blocks = []
    for reason in data.reasons:
        tags = [
            f'<span class="badge" style="background:{_colour(reason.outcome)}">'
            f"{escaped(reason.outcome)}</span>"
        ]
        if reason.outcome == "updated":
            tags.append('<span class="tag">with a difference</span>')
        if reason.http_status is not None:
            tags.append(f'<span class="tag">HTTP {reason.http_status}</span>')
        if reason.error_code:
            tags.append(f'<span class="tag"><code>{escaped(reason.error_code)}</code></span>')
        # A row's own message is shown only when it says more than the reason above it.
        examples = "".join(
            f'<li><span class="row">row {row:,}</span> '
            f'<code class="id">{escaped(identifier)}</code>'
            + (
                f' <span class="message">{escaped(_cut(message))}</span>'
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
            f'<p class="pattern">{escaped(reason.reason or "(no message)")}</p>'
            f'<p class="muted small">{escaped(label)}:</p><ul class="examples">{examples}</ul>'
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
    return section("reasons", title, intro + "".join(blocks) + tail)


def _rows(count: int) -> str:
    return f"{count:,} row" if count == 1 else f"{count:,} rows"


def _colour(outcome: str) -> str:
    return _OUTCOME_COLOURS.get(outcome, _PENDING_COLOUR)


def _cut(message: str) -> str:
    if len(message) <= MESSAGE_CHARS:
        return message
    return message[:MESSAGE_CHARS] + f"… ({len(message):,} characters)"
