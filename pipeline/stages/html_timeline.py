"""The HTML run report's timeline: requests, 429s and retries per interval over the run's
sessions, with its stops and resumes, and a table of the sessions."""

from __future__ import annotations

import math
from collections.abc import Sequence

from pipeline.stages.html_markup import axis_clock, clock, duration, escaped, section
from pipeline.stages.run_figures import RunFigures, Session

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


def _buckets(session: Session, width: int) -> list[list[int]]:
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


def timeline_section(data: RunFigures) -> str:
    sessions = data.sessions
    if not sessions:
        # No events table, or an empty one that a newer mateo-bulk added when it opened the
        # journal: the run was made by a version that did not record its requests over time.
        why = (
            "No timeline: this run's journal has no record of its requests over time (it was "
            "written by an earlier version of mateo-bulk). The counts below are complete."
        )
        return section("timeline", "Timeline", f"<p>{escaped(why)}</p>")
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
        f'per {escaped(duration(width))} <span class="swatch" style="background:#c62828"></span>'
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
            f"<tr><td>{number}</td><td>{escaped(session.kind)}</td>"
            f'<td class="when">{escaped(clock(session.began))}</td>'
            f'<td class="num">{escaped(duration(session.ended - session.began))}</td>'
            f'<td class="num">{requests:,}</td><td class="num">{retries:,}</td>'
            f'<td class="num">{limited:,}</td><td class="num">{done:,}</td>'
            f'<td class="wrap">{escaped(ended)}</td></tr>'
        )
    table = (
        '<div class="scroll"><table class="sessions"><thead><tr><th>#</th><th>session</th>'
        '<th>began (UTC)</th><th class="num">took</th><th class="num">requests</th>'
        '<th class="num">retries</th><th class="num">429s</th><th class="num">rows recorded</th>'
        f"<th>how it ended</th></tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
    )
    return section("timeline", "Timeline", f'<div class="scroll">{figure}</div>{legend}{table}')


def _timeline_svg(
    sessions: Sequence[Session],
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
            label = f"resumed {clock(session.began)}"
            previous = sessions[number - 1]
            if previous.end == "stop":
                label = f"stopped · resumed {duration(session.began - previous.ended)} later"
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
                f"{escaped(axis_clock(session.began, span))}</text>"
            )
            last_label = x0
        for offset, (requests, retries, limited, _rows) in enumerate(buckets):
            x = left + (index + offset) * step
            start = session.began + offset * width
            when = f"{clock(start)} +{duration(width)}"
            if requests:
                height = plot * requests / scale
                parts.append(
                    f'<rect class="req" x="{x + step * 0.1:.2f}" y="{top + plot - height:.2f}" '
                    f'width="{max(step * 0.8, 0.8):.2f}" height="{height:.2f}">'
                    f"<title>{escaped(when)}: {requests:,} requests</title></rect>"
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
                        f'height="{height:.2f}"><title>{escaped(when)}: {value:,} {what}</title>'
                        "</rect>"
                    )
        index += len(buckets)
    last = sessions[-1]
    if last.end == "stop":
        parts.append(
            _marker(view_width - right, top, lanes_top + 2 * lane, "stopped", last.detail, share=1)
        )
    parts.append(
        f'<text class="tick" x="{view_width - right}" y="{view_height - 8}" '
        f'text-anchor="end">{escaped(axis_clock(last.ended, span))} UTC</text>'
    )
    parts.append(
        f'<text class="tick" x="{left}" y="14">requests per {escaped(duration(width))}</text>'
    )
    return (
        f'<svg class="timeline {"narrow" if narrow else "wide"}" '
        f'viewBox="0 0 {view_width} {view_height}" role="img" '
        f'aria-label="requests per {escaped(duration(width))} over the run">{"".join(parts)}</svg>'
    )


def _marker(
    x: float, top: float, bottom: float, label: str, detail: str | None, *, share: float
) -> str:
    """A dashed line across the chart at a stop or resume; `share`: how far along it is, which
    decides which way its label runs so that it stays inside the chart."""
    tooltip = label + (f": {detail}" if detail else "")
    anchor = "end" if share > 0.6 else "start" if share < 0.25 else "middle"
    return (
        f'<g class="marker"><title>{escaped(tooltip)}</title>'
        f'<line x1="{x:.1f}" y1="{top - 6}" x2="{x:.1f}" y2="{bottom}"/>'
        f'<text x="{x:.1f}" y="{top - 10}" text-anchor="{anchor}">{escaped(label)}</text></g>'
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
