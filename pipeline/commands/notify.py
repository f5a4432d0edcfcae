"""Alerts from scheduled runs: a Slack-compatible message to a webhook when a run ends.

`mateo-bulk run`, `resume` and `job` send it (`--notify-url URL`, a job file's `[notify]`) once
the run has finished or stopped; the library's `run()` sends nothing. A message goes out when
one of the conditions listed in `on` holds (all three by default):

- "finish": the run went to its end, whatever its outcomes (exit 0 or 1; a dry run; a query
  that selected nothing);
- "stop": it stopped early (exit 3, resumable; exit 4, a safety stop);
- "failure": it ended with exit 1: rows not updated, or a job's failed share above its
  `max_failed_share` (a job within its share exits 0: no failure).

The body is `{"text": "..."}`, which Slack, Mattermost, Google Chat and Discord's Slack-compatible
endpoint all accept. Delivery is best effort: a short timeout, three attempts, then one warning;
it never changes the run's exit code. The URL is a credential (whoever holds it can post to the
channel), so messages show its host only and it is never written to the run directory; it may be
read from an environment variable (`env:NAME`) or a file (`file:PATH`) to keep it off the command
line and out of reviewed job files.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

from pipeline import __version__
from pipeline.api.wire import in_clear_text
from pipeline.commands.notify_text import job_text, payload, run_text, stopped_text
from pipeline.core.errors import InputError, RunStopped, SafetyError
from pipeline.orchestrator.summary import RunSummary

if TYPE_CHECKING:
    from pipeline.commands.jobs import JobSummary

#: When a message is sent: a job file's `on` lists some of these.
CONDITIONS = ("finish", "stop", "failure")
#: Seconds per attempt, the whole answer included: a slow webhook must not hold up a schedule.
TIMEOUT = 5.0
#: Pauses before the second and third attempts (a 429's Retry-After, up to MAX_PAUSE, instead).
RETRY_PAUSES = (0.5, 1.0)
MAX_PAUSE = 5.0
ENV_PREFIX = "env:"
FILE_PREFIX = "file:"
URL_FORMS = 'a webhook URL, "env:NAME" (an environment variable) or "file:PATH"'


@dataclass(frozen=True)
class NotifySpec:
    """A job file's `[notify]` as written: `url` may still be env:NAME or file:PATH."""

    url: str | None = field(default=None, repr=False)
    on: frozenset[str] = frozenset(CONDITIONS)


@dataclass(frozen=True)
class Notifier:
    """Where the message goes and when; `repr` and every message show the URL's host only."""

    url: str = field(repr=False)
    on: frozenset[str] = frozenset(CONDITIONS)

    @property
    def host(self) -> str:
        return httpx.URL(self.url).host


# --- The URL ------------------------------------------------------------------------------------


def check_url(url: str) -> str:
    """The webhook URL, stripped, or ValueError saying why not (naming its host at most)."""
    url = url.strip()
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        # httpx's own message quotes the URL.
        raise ValueError(f"is not a URL; give {URL_FORMS}") from None
    if any(character.isspace() for character in url):
        # httpx would quote a space into the host and fail only when sending.
        raise ValueError(f"is not a URL (it holds a space); give {URL_FORMS}")
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"must be an https:// URL with a host; give {URL_FORMS}")
    if in_clear_text(parsed):
        raise ValueError(
            f"uses plain http to {parsed.host}: the URL and the message would travel in clear "
            "text; use https:// (http:// is allowed for 127.0.0.1 and localhost only)"
        )
    return url


def check_form(value: str) -> None:
    """Check what can be checked without reading a variable or a file (a job file's load)."""
    if value.startswith(ENV_PREFIX):
        if not value.removeprefix(ENV_PREFIX).strip():
            raise ValueError("env: names no variable; write env:NAME")
    elif value.startswith(FILE_PREFIX):
        if not value.removeprefix(FILE_PREFIX).strip():
            raise ValueError("file: names no file; write file:PATH")
    else:
        check_url(value)


def resolve_url(value: str, *, relative_to: Path | None = None) -> str:
    """The URL `value` gives: itself, env:NAME's value or file:PATH's content; checked.

    A relative file:PATH is read from `relative_to` (a job file's directory) when given.
    """
    check_form(value)
    if value.startswith(ENV_PREFIX):
        name = value.removeprefix(ENV_PREFIX).strip()
        url = os.environ.get(name, "").strip()
        if not url:
            raise ValueError(f"the environment variable {name} is not set (or empty)")
        where = f"the URL in {name}"
    elif value.startswith(FILE_PREFIX):
        path = Path(value.removeprefix(FILE_PREFIX).strip())
        if relative_to is not None and not path.is_absolute():
            path = relative_to / path
        try:
            url = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise ValueError(f"{path}: no such file") from None
        except (OSError, UnicodeDecodeError) as error:
            raise ValueError(f"{path}: cannot read it ({type(error).__name__})") from None
        if not url:
            raise ValueError(f"{path} is empty")
        where = f"the URL in {path}"
    else:
        return check_url(value)
    try:
        return check_url(url)
    except ValueError as error:
        raise ValueError(f"{where} {error}") from None


def check_on(value: object) -> frozenset[str]:
    """A job file's `on`: a non-empty list of CONDITIONS; ValueError otherwise."""
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(
            f'expected a non-empty list of {", ".join(CONDITIONS)}, e.g. ["stop", "failure"], '
            f"got {value!r}"
        )
    for condition in value:
        if condition not in CONDITIONS:
            raise ValueError(f"unknown condition {condition!r}; use {', '.join(CONDITIONS)}")
    return frozenset(value)


def notifier_from_flag(
    url: str | None, *, on: frozenset[str] = frozenset(CONDITIONS)
) -> Notifier | None:
    """`--notify-url URL` (or env:NAME, file:PATH) as a Notifier; InputError, exit 2, if bad."""
    if url is None:
        return None
    try:
        return Notifier(resolve_url(url), on)
    except ValueError as error:
        raise InputError(f"--notify-url: {error}") from None


# --- When ---------------------------------------------------------------------------------------


def ordered(names: Iterable[str]) -> list[str]:
    """Conditions in CONDITIONS' order, for people to read."""
    return [name for name in CONDITIONS if name in set(names)]


def conditions(exit_code: int, *, stopped: bool) -> frozenset[str]:
    """The conditions an ending meets: "stop" alone, or "finish" (and "failure" on exit 1)."""
    if stopped:
        return frozenset({"stop"})
    return frozenset({"finish", "failure"} if exit_code == 1 else {"finish"})


# --- Sending ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """How sending went; `problem` never holds the URL."""

    delivered: bool
    attempts: int
    status: int | None = None
    problem: str | None = None


def _pause(response: httpx.Response, attempt: int) -> float:
    try:
        asked = float(response.headers.get("retry-after", ""))
    except ValueError:
        asked = RETRY_PAUSES[attempt - 1]
    return min(max(asked, 0.0), MAX_PAUSE)


def deliver(
    url: str,
    body: dict[str, str],
    *,
    transport: httpx.BaseTransport | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Delivery:
    """POST `body` as JSON; retry a 429, a 5xx, a timeout or a connection error, briefly.

    Only the JSON goes out: no API token, no cookies, and no redirect is followed (it could lead
    to plain http).
    """
    content = json.dumps(body).encode("utf-8")
    headers = {"Content-Type": "application/json", "User-Agent": f"mateo-bulk/{__version__}"}
    problem: str | None = None
    status: int | None = None
    attempt = 0
    with httpx.Client(timeout=TIMEOUT, follow_redirects=False, transport=transport) as client:
        for attempt in range(1, len(RETRY_PAUSES) + 2):
            pause = RETRY_PAUSES[attempt - 1] if attempt <= len(RETRY_PAUSES) else 0.0
            # Own wording: httpx's messages may quote the URL.
            try:
                response = client.post(url, content=content, headers=headers)
            except httpx.TimeoutException:
                problem = f"no answer within {TIMEOUT:g} s"
            except httpx.TransportError as error:
                problem = f"no connection ({type(error).__name__})"
            else:
                status = response.status_code
                if response.is_success:
                    return Delivery(True, attempt, status)
                problem = f"the webhook answered {status}"
                if status != 429 and status < 500:
                    # A refusal (a revoked URL, a bad body) gets the same answer again.
                    return Delivery(False, attempt, status, problem)
                if status == 429 and attempt <= len(RETRY_PAUSES):
                    pause = _pause(response, attempt)
            if attempt <= len(RETRY_PAUSES):
                sleep(pause)
    return Delivery(False, attempt, status, problem)


def send(
    notifier: Notifier,
    text: str,
    met: frozenset[str],
    *,
    secrets: Iterable[str] = (),
    json_log: bool = False,
    transport: httpx.BaseTransport | None = None,
) -> Delivery:
    """Deliver, then say how it went: a line (a warning if not delivered) or a `notify` event.

    Nothing here raises: a notification that fails must not change the run's exit code.
    """
    try:
        delivery = deliver(notifier.url, payload(text, secrets=secrets), transport=transport)
    except KeyboardInterrupt:
        delivery = Delivery(False, 0, problem="interrupted")
    except Exception as error:  # best effort by design: the run's outcome stands regardless
        delivery = Delivery(False, 0, problem=type(error).__name__)
    attempts = f"{delivery.attempts} attempt{'s' if delivery.attempts != 1 else ''}"
    warning = (
        f"the notification to {notifier.host} was not delivered ({delivery.problem}; "
        f"{attempts}); the run's outcome and exit code are unchanged"
    )
    if json_log:
        from pipeline.commands.events import JsonEvents

        fields: dict[str, object] = {
            "host": notifier.host,
            "conditions": ordered(met),
            "delivered": delivery.delivered,
            "attempts": delivery.attempts,
            "http_status": delivery.status,
        }
        if not delivery.delivered:
            fields["message"] = warning
        JsonEvents().emit("notify", **fields)
    elif delivery.delivered:
        print(f"notified {notifier.host} ({', '.join(ordered(met))})")
    else:
        print(f"mateo-bulk: warning: {warning}", file=sys.stderr)
    return delivery


def notify_run(
    notifier: Notifier | None,
    summary: RunSummary,
    *,
    command: str,
    token: str = "",
    json_log: bool = False,
    sandbox: bool = False,
    resumed: bool = False,
) -> Delivery | None:
    """After `run` or `resume`: send if the ending meets one of the notifier's conditions."""
    if notifier is None:
        return None
    met = conditions(summary.exit_code, stopped=summary.stopped is not None)
    if not met & notifier.on:
        return None
    text = run_text(summary, command=command, sandbox=sandbox, resumed=resumed)
    return send(notifier, text, met, secrets=[token], json_log=json_log)


def notify_job(
    notifier: Notifier | None,
    job: JobSummary,
    *,
    token: str = "",
    json_log: bool = False,
    sandbox: bool = False,
) -> Delivery | None:
    """After `job`: the same, judged by the job's exit code (max_failed_share applied)."""
    if notifier is None:
        return None
    stopped = job.run is not None and job.run.stopped is not None
    met = conditions(job.exit_code, stopped=stopped)
    if not met & notifier.on:
        return None
    return send(notifier, job_text(job, sandbox=sandbox), met, secrets=[token], json_log=json_log)


def notify_stopped(
    notifier: Notifier | None,
    error: RunStopped | SafetyError,
    *,
    command: str,
    token: str = "",
    json_log: bool = False,
) -> Delivery | None:
    """A stop raised before any run summed up (a job's query refused or out of budget)."""
    if notifier is None or "stop" not in notifier.on:
        return None
    text = stopped_text(error, command=command, exit_code=error.exit_code)
    return send(notifier, text, frozenset({"stop"}), secrets=[token], json_log=json_log)
