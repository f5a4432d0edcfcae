"""The HTML run report's closing sections: the commands to run next (resume, retry the
failures, undo, apply the plan), the run's files, and its settings."""

from __future__ import annotations

import json
import shlex
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

from pipeline.stages.html_markup import escaped, section
from pipeline.stages.run_figures import RunFigures


def commands_section(data: RunFigures, settings: Mapping[str, Any]) -> str:
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
                f"<code>mateo-bulk run {escaped(shlex.quote(str(data.meta.get('input', 'INPUT'))))}"
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
        items.append(("Undo", None, escaped(_no_undo(data, settings))))
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
        f'<div class="command"><h3>{escaped(name)}</h3>'
        + (f"<pre><code>{escaped(command)}</code></pre>" if command else "")
        + f"<p>{note}</p></div>"
        for name, command, note in items
    )
    return section("commands", "What to run next", blocks)


def _no_undo(data: RunFigures, settings: Mapping[str, Any]) -> str:
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


def files_section(data: RunFigures) -> str:
    names = {
        "report": "the report: one line per input row",
        "failures": "failed, rejected and invalid rows, as an input file to fix and run again",
        "undo": "the undo file",
        "plan": "the plan",
    }
    items = "".join(
        f"<li><code>{escaped(path.resolve())}</code> — {escaped(names[key])}</li>"
        for key, path in data.files.items()
        if path is not None
    )
    if not items:
        items = "<li>none written yet</li>"
    return section("files", "Files", f"<ul>{items}</ul>")


def settings_section(data: RunFigures, settings: Mapping[str, Any]) -> str:
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
    return section(
        "settings",
        "Settings",
        "<p>As the run was started (a resume may change how the rest is sent: "
        "<code>resume_overrides</code>). No token is kept.</p>"
        f"{_key_values(settings.items())}<h3>The run</h3>{_key_values(run_facts.items())}",
    )


def _key_values(pairs: Iterable[tuple[str, Any]]) -> str:
    rows = "".join(
        f'<tr><th scope="row"><code>{escaped(key)}</code></th>'
        f'<td class="wrap">{escaped(_show(value))}</td></tr>'
        for key, value in sorted(pairs)
    )
    return f'<div class="scroll"><table class="settings"><tbody>{rows}</tbody></table></div>'


def _show(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False)
