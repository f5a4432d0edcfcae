"""Alerts from scheduled runs: `[notify]` and `--notify-url` post to a local webhook receiver."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli.main import main
from pipeline.commands import notify
from pipeline.commands.job_file import load_job
from pipeline.commands.notify import Notifier, conditions, deliver, notify_run
from pipeline.core.errors import AuthError
from pipeline.core.models import Outcome
from pipeline.orchestrator.summary import RunSummary
from pipeline.sandbox import Sandbox
from tests.helpers import read_report, run_cli, write_csv

UNKNOWN_ID = "00000000-0000-4000-8000-000000000001"
#: The part of the webhook URL that is the credential: it must never be printed or logged.
SECRET = "XXsecretXXpathXX"
WEBHOOK_VARIABLE = "MATEO_TEST_WEBHOOK_URL"


class Receiver:
    """What the local webhook received; `statuses` are answered in turn, then `status`."""

    def __init__(self) -> None:
        self.url = ""
        self.status = 200
        self.statuses: list[int] = []
        self.requests: list[dict[str, Any]] = []

    @property
    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(request["body"]) for request in self.requests]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook on 127.0.0.1 (http.server in a thread) that records every POST."""
    received = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            received.requests.append(
                {
                    "path": self.path,
                    "headers": {name.lower(): value for name, value in self.headers.items()},
                    "body": body.decode("utf-8"),
                }
            )
            status = received.statuses.pop(0) if received.statuses else received.status
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    received.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/T000/B000/{SECRET}"
    try:
        yield received
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sandbox: Sandbox) -> None:
    """In-process CLI calls run in tmp_path, with the sandbox's token and no retry pauses."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MATEO_API_TOKEN", sandbox.token)
    monkeypatch.delenv("MATEO_BASE_URL", raising=False)
    monkeypatch.setattr(notify, "RETRY_PAUSES", (0.0, 0.0))


def closed_port_url() -> str:
    """A loopback URL nothing listens on: the webhook is down."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/hooks/{SECRET}"


def write_job(
    tmp_path: Path,
    sandbox: Sandbox,
    *,
    notify_table: str,
    share: float | None = None,
    limits: str = "",
    name: str = "nightly",
) -> Path:
    """A file job of 2 rows: one conversation to archive, one unknown id (not_found)."""
    known = next(row["id"] for row in sandbox.rows() if row["status"] != "archived")
    write_csv(tmp_path / "rows.csv", [{"conversation_id": known}, {"conversation_id": UNKNOWN_ID}])
    job = tmp_path / f"{name}.toml"
    job.write_text(
        (f"max_failed_share = {share}\n" if share is not None else "")
        + '[source]\nfile = "rows.csv"\n[set]\nstatus = "archived"\n'
        + f'[limits]\nrate = "unlimited"\n{limits}'
        + f'[output]\nrun_dir = "run-{name}"\n'
        + notify_table,
        encoding="utf-8",
    )
    return job


def notify_table(on: str | None = None, url: str = f"env:{WEBHOOK_VARIABLE}") -> str:
    return f'[notify]\nurl = "{url}"\n' + (f"on = {on}\n" if on is not None else "")


# --- A job against the sandbox ------------------------------------------------------------------


def test_job_posts_one_message_with_counts_and_exit_code(
    sandbox: Sandbox, receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`mateo-bulk job` (a real process): one JSON message with the outcome counts, the exit
    code, the failed share, the report and run directory; the token goes nowhere near it."""
    monkeypatch.setenv(WEBHOOK_VARIABLE, receiver.url)
    job = write_job(tmp_path, sandbox, notify_table=notify_table(), share=0.1)
    result = run_cli("job", job, "--base-url", sandbox.base_url, token=sandbox.token, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    (request,) = receiver.requests
    assert request["headers"]["content-type"] == "application/json"
    assert "authorization" not in request["headers"]
    assert sandbox.token not in json.dumps(request)
    (message,) = receiver.messages
    assert set(message) == {"text"}
    text = message["text"]
    first = text.splitlines()[0]
    assert first.startswith("mateo-bulk job nightly on ") and first.endswith(
        "finished with failures (exit 1)"
    )
    assert "rows: 2: updated 1, not_found 1" in text
    assert "failed share: 50.0% (1 of 2 rows; max_failed_share 0.1)" in text
    run_dir = (tmp_path / "run-nightly").absolute()
    assert f"run directory: {run_dir}" in text
    assert f"report: {run_dir / 'report.csv'}" in text
    assert f"undo: `mateo-bulk run {run_dir / 'undo.csv'}`" in text
    assert "notified 127.0.0.1 (finish, failure)" in result.stdout
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("on", "share", "code", "sent"),
    [
        ('["stop", "failure"]', 0.5, 0, False),  # within max_failed_share: a success
        ('["stop", "failure"]', 0.1, 1, True),  # past it: a failure
        ('["stop"]', 0.1, 1, False),
        ('["finish"]', 0.5, 0, True),
        ('["finish"]', 0.1, 1, True),  # a failed run finished too
        (None, 0.5, 0, True),  # no `on`: every ending
    ],
)
def test_on_decides_when_a_message_is_sent(
    sandbox: Sandbox,
    receiver: Receiver,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: None,
    on: str | None,
    share: float,
    code: int,
    sent: bool,
) -> None:
    """`on` is honoured: no message on success when only stops and failures are asked for."""
    monkeypatch.setenv(WEBHOOK_VARIABLE, receiver.url)
    job = write_job(tmp_path, sandbox, notify_table=notify_table(on), share=share)
    assert main(["job", str(job), "--base-url", sandbox.base_url, "--quiet"]) == code
    assert len(receiver.messages) == (1 if sent else 0)
    if sent:
        assert f"(exit {code})" in receiver.messages[0]["text"].splitlines()[0]
    assert ("notified 127.0.0.1" in capsys.readouterr().out) is sent


def test_a_stop_says_how_to_resume_and_resume_notifies_too(
    sandbox: Sandbox,
    receiver: Receiver,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    env: None,
) -> None:
    """A job out of requests stops (exit 3): the message gives the reason and the resume
    command; `resume --notify-url` sends the finished run's message."""
    monkeypatch.setenv(WEBHOOK_VARIABLE, receiver.url)
    job = write_job(
        tmp_path, sandbox, notify_table=notify_table('["stop"]'), limits="max_requests = 1\n"
    )
    assert main(["job", str(job), "--base-url", sandbox.base_url, "--quiet"]) == 3
    (message,) = receiver.messages
    run_dir = (tmp_path / "run-nightly").absolute()
    lines = message["text"].splitlines()
    assert lines[0].endswith("stopped early (exit 3)")
    assert lines[1].startswith("reason: ") and "max" in lines[1]
    assert "skipped 1" in message["text"]
    assert f"resume: `mateo-bulk resume {run_dir}`" in lines
    code = main(
        ["resume", str(run_dir), "--max-requests", "10", "--notify-url", receiver.url, "--quiet"]
    )
    assert code == 1  # the unknown id: not_found
    assert len(receiver.messages) == 2
    text = receiver.messages[1]["text"]
    assert text.startswith(f"mateo-bulk resume {run_dir} on ")
    assert "finished with failures (exit 1)" in text and "not_found 1" in text
    assert "(this session)" in text


def test_run_notify_url_posts_the_run(
    sandbox: Sandbox, receiver: Receiver, tmp_path: Path, env: None
) -> None:
    """`run --notify-url`: every ending by default; a clean run says exit 0."""
    row = next(row for row in sandbox.rows() if row["status"] != "archived")
    rows = write_csv(tmp_path / "in.csv", [{"conversation_id": row["id"], "status": "archived"}])
    code = main(
        ["run", str(rows), "--base-url", sandbox.base_url, "--rate", "unlimited", "--quiet",
         "--run-dir", "run", "--notify-url", receiver.url]
    )  # fmt: skip
    assert code == 0
    (message,) = receiver.messages
    assert message["text"].splitlines()[0].endswith(": finished (exit 0)")
    assert "rows: 1: updated 1" in message["text"]
    assert [line["outcome"] for line in read_report(tmp_path / "run" / "report.csv")] == ["updated"]


# --- A webhook that fails never changes the outcome ----------------------------------------------


@pytest.mark.parametrize("failure", ["down", "500", "404"])
def test_a_failing_webhook_keeps_the_exit_code_and_warns_once(
    sandbox: Sandbox,
    receiver: Receiver,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: None,
    failure: str,
) -> None:
    """Down, 500 (retried: 3 attempts) or 404 (not retried): the job's exit code is as without
    a webhook, and stderr gets one warning line naming the host only."""
    url = closed_port_url() if failure == "down" else receiver.url
    receiver.status = int(failure) if failure != "down" else 200
    monkeypatch.setenv(WEBHOOK_VARIABLE, url)
    job = write_job(tmp_path, sandbox, notify_table=notify_table(), share=0.5)
    assert main(["job", str(job), "--base-url", sandbox.base_url, "--quiet"]) == 0
    captured = capsys.readouterr()
    warnings = [line for line in captured.err.splitlines() if "warning" in line]
    assert warnings == captured.err.splitlines() and len(warnings) == 1, captured.err
    assert "the notification to 127.0.0.1 was not delivered" in warnings[0]
    assert "exit code are unchanged" in warnings[0]
    assert SECRET not in captured.out + captured.err
    attempts = {"down": 0, "500": 3, "404": 1}[failure]
    assert len(receiver.requests) == attempts
    if failure != "down":
        assert f"answered {failure}; {attempts} attempt" in warnings[0]


def test_json_log_reports_the_notification_as_an_event(
    sandbox: Sandbox,
    receiver: Receiver,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: None,
) -> None:
    """--log-format json: stderr stays JSON lines; a `notify` event after the summary, with
    the host only, `delivered` false on a 500, and the exit code unchanged."""
    receiver.status = 500
    monkeypatch.setenv(WEBHOOK_VARIABLE, receiver.url)
    job = write_job(tmp_path, sandbox, notify_table=notify_table(), share=0.1)
    code = main(["job", str(job), "--base-url", sandbox.base_url, "--log-format", "json"])
    assert code == 1
    captured = capsys.readouterr()
    events = [json.loads(line) for line in captured.err.splitlines()]
    assert [event["event"] for event in events][-2:] == ["summary", "notify"]
    event = events[-1]
    assert event["host"] == "127.0.0.1" and event["delivered"] is False
    assert event["attempts"] == 3 and event["http_status"] == 500
    assert event["conditions"] == ["finish", "failure"] and "not delivered" in event["message"]
    assert events[-2]["exit_code"] == 1
    assert SECRET not in captured.err + captured.out


def test_retried_until_delivered(receiver: Receiver) -> None:
    """A 503 then a 200: delivered on the second attempt, after a pause."""
    receiver.statuses = [503]
    pauses: list[float] = []
    delivery = deliver(receiver.url, {"text": "hello"}, sleep=pauses.append)
    assert delivery.delivered and delivery.attempts == 2 and pauses == [notify.RETRY_PAUSES[0]]
    assert receiver.messages == [{"text": "hello"}, {"text": "hello"}]


# --- A bad URL or key: exit 2, file, line and key, nothing sent -----------------------------------


@pytest.mark.parametrize(
    ("table", "line", "key", "words"),
    [
        ('[notify]\nurl = "http://example.com/hooks/XXsecretXXpathXX"\n', 2, "notify.url",
         "plain http to example.com"),
        ('[notify]\nurl = "ftp://example.com/XXsecretXXpathXX"\n', 2, "notify.url", "https://"),
        ('[notify]\nurl = "env:MATEO_TEST_NO_SUCH_VARIABLE"\n', 2, "notify.url", "not set"),
        ('[notify]\nurl = "file:no-such-file.url"\n', 2, "notify.url", "no such file"),
        ('[notify]\nurl = 42\n', 2, "notify.url", "expected a URL"),
        ('[notify]\nurl = "env:{variable}"\non = ["sometimes"]\n', 3, "notify.on", "sometimes"),
        ('[notify]\nurl = "env:{variable}"\non = []\n', 3, "notify.on", "non-empty list"),
        ('[notify]\nurl = "env:{variable}"\nchannel = "#ops"\n', 3, "notify.channel",
         "unknown key"),
        ('[notify]\non = ["stop"]\n', 1, "notify", "has no url"),
        ('notify = "https://example.com/hook"\n', 1, "notify", "must be a table"),
    ],
    ids=[
        "plain-http", "not-https", "unset-variable", "missing-file", "not-a-string",
        "unknown-condition", "empty-on", "unknown-key", "no-url", "not-a-table",
    ],
)  # fmt: skip
def test_bad_notify_table_is_exit_2_with_file_line_and_key(
    sandbox: Sandbox,
    receiver: Receiver,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: None,
    table: str,
    line: int,
    key: str,
    words: str,
) -> None:
    """Checked before anything is sent: no request to the API, no message to the webhook,
    and the message never shows the URL (its host at most)."""
    monkeypatch.setenv(WEBHOOK_VARIABLE, receiver.url)
    monkeypatch.delenv("MATEO_TEST_NO_SUCH_VARIABLE", raising=False)
    job = tmp_path / "broken.toml"
    write_csv(tmp_path / "rows.csv", [{"conversation_id": UNKNOWN_ID}])
    job.write_text(
        table.format(variable=WEBHOOK_VARIABLE)
        + '\n[source]\nfile = "rows.csv"\n[set]\nstatus = "closed"\n',
        encoding="utf-8",
    )
    assert main(["job", str(job), "--base-url", sandbox.base_url]) == 2
    error = capsys.readouterr().err
    assert f"{job}, line {line}: {key}:" in error, error
    assert words in error and "Traceback" not in error
    assert SECRET not in error
    assert sandbox.stats()["requests"] == 0 and receiver.requests == []


@pytest.mark.parametrize("command", ["run", "resume", "job"])
@pytest.mark.parametrize(
    ("url", "words"),
    [
        (f"http://example.com/{SECRET}", "plain http to example.com"),
        (f"hooks.example.com/{SECRET}", "must be an https:// URL"),
        (f"https://exa mple.com/{SECRET}", "holds a space"),
        ("env:MATEO_TEST_NO_SUCH_VARIABLE", "MATEO_TEST_NO_SUCH_VARIABLE is not set"),
    ],
)
def test_bad_notify_url_flag_is_exit_2_before_anything_is_sent(
    sandbox: Sandbox,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    env: None,
    command: str,
    url: str,
    words: str,
) -> None:
    """--notify-url on run, resume and job: a bad URL is one line, exit 2, nothing sent."""
    monkeypatch.delenv("MATEO_TEST_NO_SUCH_VARIABLE", raising=False)
    rows = write_csv(tmp_path / "in.csv", [{"conversation_id": UNKNOWN_ID, "status": "open"}])
    job = write_job(tmp_path, sandbox, notify_table="")
    target = {"run": str(rows), "resume": str(tmp_path / "no-run"), "job": str(job)}[command]
    argv = [command, target, "--notify-url", url]
    if command != "resume":
        argv += ["--base-url", sandbox.base_url]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith("mateo-bulk: --notify-url: ") and words in error, error
    assert SECRET not in error
    assert sandbox.stats()["requests"] == 0


# --- Where the URL comes from ---------------------------------------------------------------------


def test_url_from_a_file_next_to_the_job_and_check_shows_the_host(
    sandbox: Sandbox,
    receiver: Receiver,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    env: None,
) -> None:
    """file:PATH is relative to the job file; --check names the host and `on`, sends nothing."""
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "webhook.url").write_text(receiver.url + "\n", encoding="utf-8")
    job = write_job(
        tmp_path,
        sandbox,
        notify_table=notify_table('["failure", "stop"]', "file:secrets/webhook.url"),
    )
    assert main(["job", str(job), "--check"]) == 0
    out = capsys.readouterr().out
    assert "  notify: 127.0.0.1 on stop, failure" in out and SECRET not in out
    assert receiver.requests == [] and sandbox.stats()["requests"] == 0
    assert main(["job", str(job), "--base-url", sandbox.base_url, "--quiet"]) == 1
    assert len(receiver.messages) == 1


def test_the_flag_replaces_the_files_url_and_keeps_its_on(
    sandbox: Sandbox,
    receiver: Receiver,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    env: None,
) -> None:
    """--notify-url over [notify]: the file's variable is not even read; its `on` applies."""
    monkeypatch.delenv("MATEO_TEST_NO_SUCH_VARIABLE", raising=False)
    table = notify_table('["stop"]', "env:MATEO_TEST_NO_SUCH_VARIABLE")
    job = write_job(tmp_path, sandbox, notify_table=table)
    argv = ["job", str(job), "--base-url", sandbox.base_url, "--quiet"]
    assert main([*argv, "--notify-url", receiver.url]) == 1
    assert receiver.requests == []  # finished with failures, but only stops were asked for
    spec = load_job(job)
    assert spec.notify is not None and spec.notify.on == {"stop"}
    assert "MATEO_TEST_NO_SUCH_VARIABLE" not in repr(spec)  # the URL's value stays out of reprs


# --- The message itself ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "stopped", "met"),
    [
        (0, False, {"finish"}),
        (1, False, {"finish", "failure"}),
        (3, True, {"stop"}),
        (4, True, {"stop"}),
    ],
)
def test_conditions(code: int, stopped: bool, met: set[str]) -> None:
    assert conditions(code, stopped=stopped) == met


def test_the_token_is_never_posted_even_if_a_reason_quotes_it(
    receiver: Receiver, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A stop reason that quoted the token would be blanked before the message leaves."""
    token = "mateo-token-1234567890"
    summary = RunSummary(
        counts={Outcome.UPDATED: 1, Outcome.SKIPPED: 1},
        total_rows=2,
        requests=3,
        retries=1,
        report_path=tmp_path / "run" / "report.csv",
        run_dir=tmp_path / "run",
        elapsed=2.5,
        dry_run=False,
        stopped=AuthError(f"the API refused Bearer {token}", http_status=401),
    )
    notifier = Notifier(receiver.url)
    assert SECRET not in repr(notifier)
    delivery = notify_run(notifier, summary, command="run in.csv", token=token)
    assert delivery is not None and delivery.delivered
    (request,) = receiver.requests
    assert token not in json.dumps(request)
    text = receiver.messages[0]["text"]
    assert "reason: the API refused Bearer [redacted]" in text
    assert text.splitlines()[0].endswith("stopped early (exit 3)")
    assert "rows: 2: updated 1, skipped 1" in text
    assert "requests: 3 (1 retries) in 2.5 s" in text
    assert f"resume: `mateo-bulk resume {tmp_path / 'run'}`" in text
    assert capsys.readouterr().out == "notified 127.0.0.1 (stop)\n"
