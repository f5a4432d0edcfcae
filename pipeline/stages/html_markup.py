"""The HTML run report's page and style, and the small helpers every section of it uses:
escaping, sections, times and durations."""

from __future__ import annotations

from datetime import UTC, datetime
from html import escape


def escaped(value: object) -> str:
    """Any value as text safe inside an element or a quoted attribute."""
    return escape(str(value), quote=True)


def section(anchor: str, title: str, content: str) -> str:
    return f'<section id="{anchor}"><h2>{escaped(title)}</h2>{content}</section>'


def when(text: object) -> str:
    if not isinstance(text, str):
        return "?"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return text
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def clock(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%d %H:%M:%S")


def axis_clock(moment: float, span: float) -> str:
    """A time under the timeline: to the second for a run of hours, with the day for longer."""
    when = datetime.fromtimestamp(moment, UTC)
    return when.strftime("%H:%M:%S" if span < 6 * 3600 else "%m-%d %H:%M")


def duration(seconds: float) -> str:
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


PAGE = """<!DOCTYPE html>
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

STYLE = """
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
