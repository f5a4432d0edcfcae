"""The HTML run report: written by every run and by `report --report x.html`, self-contained,
escaped, with the right counts, reasons and commands, and readable by a real browser."""

from __future__ import annotations

import http.server
import json
import re
import shlex
import shutil
import sqlite3
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from pipeline.core.models import FieldValues, Outcome, RowResult
from pipeline.sandbox import Sandbox
from pipeline.stages.html_report import write_html_report
from pipeline.stages.journal import Journal
from pipeline.stages.run_figures import reason_of
from tests.helpers import AGENTS, INBOXES, run_cli, write_csv

UNKNOWN_ID = "00000000-0000-4000-8000-000000000001"
UNKNOWN_INBOX = "00000000-0000-4000-8000-0000000000aa"
HOSTILE = "<script>alert(1)</script>"
HOSTILE_ID = '"><img src=x onerror=alert(2)>'


class _Text(HTMLParser):
    """The text a reader sees (what is inside <style> is not text)."""

    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = False

    def handle_starttag(self, tag: str, attrs: object) -> None:
        self._skip = tag == "style"

    def handle_endtag(self, tag: str) -> None:
        self._skip = False

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


def page_text(page: str) -> str:
    parser = _Text()
    parser.feed(page)
    return " ".join(" ".join(parser.parts).split())


class _Tags(HTMLParser):
    """Every element and attribute of a page, as a browser's parser sees them."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: set[str] = set()
        self.attributes: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.add(tag)
        self.attributes.update(name for name, _ in attrs)


def assert_self_contained(page: str) -> None:
    """Nothing to fetch, nothing to run: no script, no element or attribute that loads or
    links anything, no url() in the style, and a Content-Security-Policy that forbids it all."""
    parser = _Tags()
    parser.feed(page)
    assert not parser.tags & {"script", "link", "img", "iframe", "object", "embed", "a", "image"}
    assert not parser.attributes & {"src", "href", "xlink:href", "srcset", "action", "poster"}
    assert not any(name.startswith("on") for name in parser.attributes)
    assert "url(" not in page and "@import" not in page
    assert "default-src 'none'" in page


def mixed_rows(sandbox: Sandbox) -> list[dict[str, str]]:
    """Three rows to close, one unknown id, two with a bad id, one with an unknown inbox."""
    ids = [row["id"] for row in sandbox.rows() if row["status"] == "open"]
    return [
        *({"conversation_id": row_id, "status": "closed"} for row_id in ids[:3]),
        {"conversation_id": UNKNOWN_ID, "status": "closed"},
        {"conversation_id": "not-an-id", "status": "closed"},
        {"conversation_id": "also-bad", "status": "closed"},
        {"conversation_id": ids[3], "inbox_id": UNKNOWN_INBOX},
    ]


def run_in_sandbox(sandbox: Sandbox, input_path: Path, run_dir: Path, *args: str):  # type: ignore[no-untyped-def]
    return run_cli(
        "run", input_path, "--base-url", sandbox.base_url, "--rate", "unlimited",
        "--run-dir", run_dir, "--quiet", *args, token=sandbox.token,
    )  # fmt: skip


def test_every_run_writes_report_html(sandbox: Sandbox, tmp_path: Path) -> None:
    """A run against the sandbox leaves report.html beside report.csv: the counts, the reasons
    with example rows, the transitions, and the commands naming this run directory."""
    run_dir = tmp_path / "run dir"  # a space: the commands must quote it
    path = write_csv(tmp_path / "in.csv", mixed_rows(sandbox))
    result = run_in_sandbox(sandbox, path, run_dir)
    assert result.returncode == 1, result.stderr
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert f"run report (open in a browser): {run_dir / 'report.html'}" in result.stdout
    text = page_text(page)

    assert "Finished: 3 of 7 rows at their target" in text
    for outcome, count in (("updated", 3), ("not_found", 1), ("invalid", 2), ("rejected", 1)):
        assert re.search(rf"{outcome}</th><td class=\"num\">{count}</td>", page), outcome
    # The two bad ids share one reason, with both rows as examples.
    assert "conversation_id is not a uuid: '…' " in text and "2 rows" in text
    assert "row 5 not-an-id" in text and "row 6 also-bad" in text
    assert "no such conversation when read" in text and UNKNOWN_ID in text
    assert "HTTP 409" in text  # the unknown inbox, refused by the API
    assert "status open → closed 3" in text

    quoted = shlex.quote(str(run_dir.resolve()))
    assert quoted.startswith("'")
    assert f"mateo-bulk resume {quoted}" in text
    assert f"mateo-bulk resume {quoted} --retry-failed" in text
    assert f"mateo-bulk run {shlex.quote(str((run_dir / 'undo.csv').resolve()))}" in text
    assert "Timeline" in text and "requests per" in text
    assert sandbox.token not in page
    assert_self_contained(page)


def test_a_stopped_run_gets_a_report_from_the_report_command(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """`report RUN --report x.html` on a run stopped by --max-requests: the headline says
    stopped, the timeline shows the stop, and the commands resume it; why there is no undo file
    (--no-snapshot) is said. The run's own report.html says the same."""
    ids = [row["id"] for row in sandbox.rows() if row["status"] == "open"][:6]
    path = write_csv(tmp_path / "in.csv", [{"conversation_id": i, "status": "closed"} for i in ids])
    run_dir = tmp_path / "run"
    stopped = run_in_sandbox(
        sandbox, path, run_dir, "--max-requests", "2", "--batch-size", "1", "--concurrency", "1",
        "--no-snapshot",
    )  # fmt: skip
    assert stopped.returncode == 3, stopped.stderr
    exported = run_cli("report", run_dir, "--report", tmp_path / "out" / "x.html")
    assert exported.returncode == 0, exported.stderr
    assert "x.html (6 rows)" in exported.stdout
    for page in (
        (tmp_path / "out" / "x.html").read_text(encoding="utf-8"),
        (run_dir / "report.html").read_text(encoding="utf-8"),
    ):
        text = page_text(page)
        assert "Stopped: 2 of 6 rows at their target" in text
        assert "--max-requests" in text  # the stop's reason
        assert "skipped 4" in text.replace("</th>", "")
        assert f"mateo-bulk resume {shlex.quote(str(run_dir.resolve()))}" in text
        assert "Sends the 4 rows not done yet" in text
        assert "No undo file: the rows' values before the run are not known" in text
        assert '<g class="marker"><title>stopped: ' in page  # the stop, on the timeline
        assert_self_contained(page)


def test_report_html_of_a_finished_run_without_undo_says_why(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """A dry run: no undo file, and the page says a dry run changes nothing and cannot be
    resumed; `report` refuses other suffixes as before."""
    path = write_csv(tmp_path / "in.csv", mixed_rows(sandbox))
    run_dir = tmp_path / "run"
    result = run_cli("run", path, "--dry-run", "--run-dir", run_dir, "--quiet")
    assert result.returncode == 1, result.stderr
    text = page_text((run_dir / "report.html").read_text(encoding="utf-8"))
    assert "Dry run: 5 of 7 rows would be sent" in text
    assert "No undo file: a dry run changes nothing." in text
    assert "cannot be resumed" in text
    assert "Changes planned: before → after" in text and "not read" in text
    refused = run_cli("report", run_dir, "--report", tmp_path / "x.txt")
    assert refused.returncode == 2 and ".html" not in refused.stderr


class _HostileApi(http.server.BaseHTTPRequestHandler):
    """Refuses every PATCH with a 409 whose message and details are markup."""

    def do_PATCH(self) -> None:  # noqa: N802 (http.server's naming)
        body = json.dumps(
            {"code": "23503", "message": HOSTILE, "details": "<img src=x onerror=alert(3)>"}
        ).encode()
        self.send_response(409)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def hostile_api() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HostileApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api/v1"
    server.shutdown()
    server.server_close()


def test_a_servers_markup_and_a_hostile_id_are_escaped(hostile_api: str, tmp_path: Path) -> None:
    """The server's error message and an input cell are shown as text, never as markup."""
    rows = [
        {"conversation_id": UNKNOWN_ID, "inbox_id": INBOXES[1]},
        {"conversation_id": HOSTILE_ID, "status": "closed"},
    ]
    path = write_csv(tmp_path / "in.csv", rows)
    result = run_cli(
        "run", path, "--base-url", hostile_api, "--no-snapshot", "--rate", "unlimited",
        "--run-dir", tmp_path / "run", "--quiet", token="tok-secret-1f2e3d",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    page = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert HOSTILE not in page and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "&lt;img src=x onerror=alert(3)&gt;" in page
    assert "&quot;&gt;&lt;img src=x onerror=alert(2)&gt;" in page
    assert "tok-secret-1f2e3d" not in page
    text = page_text(page)
    assert HOSTILE in text  # shown, as text
    assert_self_contained(page)


def test_a_journal_from_before_the_timeline_still_gets_a_report(tmp_path: Path) -> None:
    """A journal with no events table (an earlier version's): the page says there is no
    timeline and shows the rest; hostile text in settings and messages is escaped."""
    run_dir = tmp_path / "old"
    run_dir.mkdir()
    old_schema = """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE results (row INTEGER PRIMARY KEY, conversation_id TEXT NOT NULL,
        outcome TEXT NOT NULL, http_status INTEGER, attempts INTEGER NOT NULL, error_code TEXT,
        error_message TEXT, change TEXT NOT NULL, returned TEXT, difference TEXT, before TEXT);
    CREATE TABLE intents (row INTEGER PRIMARY KEY, conversation_id TEXT NOT NULL,
        change TEXT NOT NULL, before TEXT);
    """
    with sqlite3.connect(run_dir / "journal.sqlite") as connection:
        connection.executescript(old_schema)
        meta = {
            "settings": {"base_url": "https://api.example.test/api/v1", "column_map": {
                "status": HOSTILE}},
            "rows": 3,
            "state": "finished",
            "input": "/data/in.csv",
            "started_at": "2026-11-27T08:00:00+00:00",
        }  # fmt: skip
        connection.executemany(
            "INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()]
        )
    with Journal.open(run_dir) as journal:
        change = FieldValues((("status", "closed"),))
        journal.record(
            [
                RowResult(1, UNKNOWN_ID, Outcome.UPDATED, change=change, before={"status": "open"}),
                RowResult(
                    2, UNKNOWN_ID, Outcome.REJECTED, change=change, http_status=400,
                    error_code="22P02", error_message=f"bad value {HOSTILE}",
                ),
                RowResult(3, HOSTILE_ID, Outcome.INVALID, change=change, error_message=HOSTILE),
            ]
        )  # fmt: skip
        write_html_report(journal, tmp_path / "old.html")
    page = (tmp_path / "old.html").read_text(encoding="utf-8")
    text = page_text(page)
    assert "No timeline" in text and "earlier version" in text
    assert "Finished: 1 of 3 rows at their target" in text
    assert "status open → closed 1" in text
    assert HOSTILE not in page and "<img" not in page and HOSTILE in text
    assert "No undo file: no changed row has values before the run to restore." in text
    assert_self_contained(page)


def test_reasons_blank_what_names_a_row() -> None:
    assert reason_of("conversation_id is not a uuid: 'x1'") == reason_of(
        'conversation_id is not a uuid: "it\'s"'
    )
    assert reason_of("listed twice (first in row 43)") == "listed twice (first in row <n>)"
    server = 'Key (inbox_id)=(241daf71-98a6-4bdc-89e9-5021bba3333c) not in table "inbox"'
    assert reason_of(server) == 'Key (inbox_id)=(<uuid>) not in table "inbox"'
    assert reason_of(None) == ""


_TRANSITION = re.compile(
    r'<tr><td class="field"><code>([^<]*)</code></td><td class="value before">(.*?)</td>'
    r'<td class="arrow" aria-hidden="true">→</td><td class="value after">(.*?)</td>'
    r'<td class="num">([\d,]+)</td></tr>'
)


def transitions_shown(page: str) -> list[tuple[str, str, str, int]]:
    """The transitions table of a page: field, before and after (as the page shows them), rows."""
    return [
        (field, before, after, int(rows.replace(",", "")))
        for field, before, after, rows in _TRANSITION.findall(page)
    ]


def shown_value(value: str | None) -> str:
    if value is None:
        return '<span class="muted">not read</span>'
    if value == "null":
        return '<span class="muted">null (none)</span>'
    return f"<code>{value}</code>"


def test_a_dry_runs_transitions_count_every_planned_row(tmp_path: Path) -> None:
    """A dry run reads no value before: each planned row counts once per field it sets, as
    "not read" → its target, most rows first (then by field and value); invalid rows and
    conflicting repeats are not planned, so not counted."""
    statuses = ("open", "closed", "archived")
    rows: list[dict[str, str]] = []
    for number in range(60):
        row = {"conversation_id": f"00000000-0000-4000-8000-{number:012x}"}
        if number % 2:
            row["inbox_id"] = INBOXES[number % 3]
        if number % 3 == 0:
            row["assignee_id"] = "null" if number % 9 == 0 else AGENTS[number % 4]
        if number % 5 or len(row) == 1:
            row["status"] = statuses[number % len(statuses)]
        rows.append(row)
    rows.append({"conversation_id": "not-an-id", "status": "closed"})  # invalid
    rows.append({"conversation_id": rows[1]["conversation_id"], "status": "archived"})  # conflict
    expected: dict[tuple[str, str], int] = {}
    for row in rows[:60]:
        if row["conversation_id"] == rows[1]["conversation_id"]:
            continue  # listed twice with different targets: invalid
        for name in ("inbox_id", "assignee_id", "status"):
            if name in row:
                expected[name, row[name]] = expected.get((name, row[name]), 0) + 1
    ranked = sorted(
        expected.items(), key=lambda item: (-item[1], item[0][0], str((None, item[0][1])))
    )
    path = write_csv(tmp_path / "in.csv", rows)
    run_dir = tmp_path / "run"
    result = run_cli("run", path, "--dry-run", "--run-dir", run_dir, "--quiet")
    assert result.returncode == 1, result.stderr
    page = (run_dir / "report.html").read_text(encoding="utf-8")
    assert transitions_shown(page) == [
        (name, shown_value(None), shown_value(after), count) for (name, after), count in ranked
    ]
    assert "more transitions" not in page
    assert "“not read”: the value before was not read" in page_text(page)


def test_transitions_past_the_first_thirty_are_counted_not_shown(tmp_path: Path) -> None:
    """Planned rows with and without values before: a field already at its target is no
    transition (case aside); rows of other outcomes are not counted; past the first 30
    transitions, the rest are counted in one line."""
    with Journal.create(tmp_path / "run", {"settings": {"dry_run": True}, "rows": 0}) as journal:
        results = []
        for number in range(1, 36):
            target = f"00000000-0000-4000-8000-{number:012x}"
            for _ in range(number % 4 + 1):
                results.append((FieldValues((("inbox_id", target),)), None))
        results += [
            (FieldValues((("status", "closed"), ("assignee_id", None))), {"status": "open"}),
            (FieldValues((("status", "closed"), ("assignee_id", None))), {"status": "open"}),
            (FieldValues((("status", "Closed"),)), {"status": "closed"}),  # already there
            (FieldValues((("assignee_id", None),)), {"assignee_id": AGENTS[0]}),
            (FieldValues((("assignee_id", AGENTS[1]),)), {"assignee_id": None}),
        ]
        journal.record(
            [
                RowResult(row, UNKNOWN_ID, Outcome.PLANNED, change=change, before=before)
                for row, (change, before) in enumerate(results, 1)
            ]
            + [
                RowResult(
                    len(results) + 1, UNKNOWN_ID, Outcome.UPDATED,
                    change=FieldValues((("status", "closed"),)), before={"status": "open"},
                ),
            ]
        )  # fmt: skip
        write_html_report(journal, tmp_path / "page.html")
    page = (tmp_path / "page.html").read_text(encoding="utf-8")
    inbox = [
        (count, f"00000000-0000-4000-8000-{number:012x}")
        for number in range(1, 36)
        for count in [number % 4 + 1]
    ]
    ranked = sorted(
        [(("inbox_id", None, value), count) for count, value in inbox]
        + [
            (("status", "open", "closed"), 2),
            (("assignee_id", None, "null"), 2),
            (("assignee_id", AGENTS[0], "null"), 1),
            (("assignee_id", "null", AGENTS[1]), 1),
        ],
        key=lambda item: (-item[1], item[0][0], str(item[0][1:])),
    )
    assert transitions_shown(page) == [
        (name, shown_value(before), shown_value(after), count)
        for (name, before, after), count in ranked[:30]
    ]
    rest = ranked[30:]
    assert (
        f"and {len(rest)} more transitions ({sum(count for _, count in rest)} rows)."
        in page_text(page)
    )


CHROMIUM = shutil.which("chromium")


@pytest.mark.long
@pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (apt-get install chromium): the report is not rendered",
)
def test_chromium_renders_the_report(sandbox: Sandbox, tmp_path: Path) -> None:
    """Headless Chromium opens the page with no network: its DOM has the headline and the
    counts, the console has no error, and a screenshot (desktop and phone width) is drawn."""
    assert CHROMIUM is not None
    run_dir = tmp_path / "run"
    path = write_csv(tmp_path / "in.csv", mixed_rows(sandbox))
    assert run_in_sandbox(sandbox, path, run_dir).returncode == 1
    page = (run_dir / "report.html").resolve()
    common = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
        "--enable-logging=stderr", "--v=0",
    ]  # fmt: skip
    with tempfile.TemporaryDirectory() as profile:
        dom = subprocess.run(
            [*common, f"--user-data-dir={profile}", "--dump-dom", page.as_uri()],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "Finished: 3 of 7 rows at their target" in dom.stdout
    assert re.search(r'updated</th><td class="num">3</td>', dom.stdout)
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line]
    assert not console, console
    for name, size in (("wide.png", "1200,1600"), ("phone.png", "390,1600")):
        shot = tmp_path / name
        with tempfile.TemporaryDirectory() as profile:
            drawn = subprocess.run(
                [*common, f"--user-data-dir={profile}", f"--screenshot={shot}",
                 f"--window-size={size}", page.as_uri()],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
        assert drawn.returncode == 0, drawn.stderr[-2000:]
        image = shot.read_bytes()
        assert image.startswith(b"\x89PNG\r\n\x1a\n") and len(image) > 20_000, name
