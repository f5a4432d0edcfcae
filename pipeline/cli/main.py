"""The `mateo-bulk` command: parses flags, calls the library, maps errors to exit codes."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import os
import signal
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

from pipeline import __version__
from pipeline.api.client import BASE_URL_VARIABLE, DEFAULT_BASE_URL, TRANSPORTS
from pipeline.api.quota import DEFAULT_DAILY_QUOTA
from pipeline.core.errors import AuthError, InputError, MateoBulkError, RunStopped, SafetyError
from pipeline.orchestrator.runner import RunSettings, resume, run
from pipeline.orchestrator.status import export_report, run_status
from pipeline.orchestrator.summary import RunSummary
from pipeline.stages.validate import parse_fixed_values

TOKEN_VARIABLE = "MATEO_API_TOKEN"
#: At a terminal, a run that would change more rows than this asks first: a wrong file or a
#: query's typo is cheapest to catch before the first PATCH, and small runs need no ceremony.
CONFIRM_ABOVE = 100


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"mateo-bulk: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


def _number(kind: Callable[[str], Any], low: float) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not value >= low:
            raise argparse.ArgumentTypeError(f"{text!r} must be at least {low:g}")
        return value

    return parse


def _rate(text: str) -> float | None:
    if text.strip().lower() == "unlimited":
        return None
    value = _number(float, 0)(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be above 0 (or 'unlimited')")
    return float(value)


def _assignment(text: str) -> str:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} must look like FIELD=VALUE")
    return text


def _add_token_argument(parser: argparse._ActionsContainer) -> None:
    parser.add_argument(
        "--token-file",
        metavar="PATH",
        help=f"read the API token from this file (default: the {TOKEN_VARIABLE} variable)",
    )


def _add_notify_argument(parser: argparse._ActionsContainer, extra: str = "") -> None:
    parser.add_argument(
        "--notify-url",
        metavar="URL",
        help="when the run finishes or stops, post a Slack-compatible message (counts, exit "
        "code, how to resume or undo) to this webhook; env:NAME or file:PATH read the URL from "
        "a variable or a file; https://, or http:// for loopback only" + extra,
    )


def _add_metrics_argument(parser: argparse._ActionsContainer, extra: str = "") -> None:
    parser.add_argument(
        "--metrics-file",
        metavar="PATH",
        help="when the command ends, write the run's figures (rows by outcome, requests, 429s, "
        "retries, duration, exit code, time of the last success) to this .prom file for "
        "node_exporter's textfile collector, replacing it at once" + extra,
    )


def _add_run_arguments(parser: argparse.ArgumentParser, *, with_input: bool = True) -> None:
    if with_input:
        parser.add_argument(
            "input",
            metavar="INPUT",
            help="a .csv, .parquet, .xlsx, .xlsm, .xls or .ods file; - reads CSV from stdin",
        )
    source = parser.add_argument_group("API")
    _add_token_argument(source)
    source.add_argument(
        "--base-url",
        metavar="URL",
        default=None,
        help=f"the API's base URL (default {DEFAULT_BASE_URL}, or {BASE_URL_VARIABLE}); "
        "plain http:// only for loopback hosts",
    )
    source.add_argument(
        "--sandbox",
        action="store_true",
        help="run against the bundled sandbox, started on a free loopback port with Mateo's "
        "limits and sample_data/ (no token needed)",
    )
    columns = parser.add_argument_group("columns and values")
    columns.add_argument(
        "--map",
        metavar="FIELD=COLUMN",
        action="append",
        default=[],
        type=_assignment,
        help="read FIELD (conversation_id, inbox_id, assignee_id, status) from COLUMN",
    )
    columns.add_argument(
        "--set",
        metavar="FIELD=VALUE",
        action="append",
        default=[],
        type=_assignment,
        help="set FIELD to VALUE on every row, over the file's column (e.g. status=closed)",
    )
    columns.add_argument(
        "--delimiter", metavar="CHAR", help="CSV delimiter (default: detected from the header)"
    )
    columns.add_argument(
        "--sheet",
        metavar="NAME|N",
        help="the sheet of an .xlsx, .xlsm, .xls or .ods workbook to read: its name, or its "
        "number counted from 1 (default: the first sheet)",
    )
    columns.add_argument(
        "--strict",
        action="store_true",
        help="send nothing if any row is invalid: exit 2 naming every invalid row (the report "
        "and the failures file are written)",
    )
    sending = parser.add_argument_group("sending")
    sending.add_argument(
        "--rate",
        type=_rate,
        default=2.0,
        metavar="RPS",
        help="requests per second, or 'unlimited' (default 2: Mateo allows 2/s, 10,000/day)",
    )
    sending.add_argument(
        "--concurrency",
        type=_number(int, 1),
        default=4,
        metavar="N",
        help="requests in flight at most (default 4)",
    )
    sending.add_argument(
        "--batch-size",
        type=_number(int, 1),
        default=50,
        metavar="N",
        help="ids per grouped PATCH, at most 100 (default 50; 1 = one request per row)",
    )
    sending.add_argument(
        "--max-attempts",
        type=_number(int, 1),
        default=5,
        metavar="N",
        help="attempts per request on 429, 5xx, timeouts and connection errors (default 5)",
    )
    sending.add_argument(
        "--timeout",
        type=_number(float, 0.001),
        default=10.0,
        metavar="S",
        help="seconds per request (default 10; Mateo cuts requests off at 2 s)",
    )
    sending.add_argument(
        "--transport",
        choices=TRANSPORTS,
        default="aiohttp",
        help="HTTP connection pool (default aiohttp; see bench/ for why)",
    )
    quota = parser.add_argument_group("daily budget")
    quota.add_argument(
        "--daily-quota",
        type=_number(int, 1),
        default=DEFAULT_DAILY_QUOTA,
        metavar="N",
        help="requests the account may send per day, shared by every run on this machine "
        f"(default {DEFAULT_DAILY_QUOTA:,})",
    )
    quota.add_argument(
        "--max-requests",
        type=_number(int, 1),
        metavar="N",
        help="the most requests this run may send; then it stops, resumable",
    )
    quota.add_argument(
        "--quota-reset-utc",
        default="00:00",
        metavar="HH:MM",
        help="when the API's day starts, in UTC (default 00:00)",
    )
    quota.add_argument(
        "--max-wait",
        type=_number(float, 0),
        default=60.0,
        metavar="S",
        help="a 429 asking to wait longer stops the run, resumable (default 60)",
    )
    quota.add_argument(
        "--wait",
        action="store_true",
        help="when the budget or the API's limit is spent, sleep until it resets, not stop",
    )
    safety = parser.add_argument_group("before writing")
    safety.add_argument(
        "--no-snapshot",
        dest="snapshot",
        action="store_false",
        help="do not read rows before changing them (fewest requests; no unchanged-skipping, "
        "no snapshot guard, no undo file)",
    )
    safety.add_argument(
        "--no-guard",
        dest="guarded",
        action="store_false",
        help="send PATCHes without the values read as filters (a row changed meanwhile is "
        "overwritten)",
    )
    safety.add_argument(
        "--max-changes",
        type=_number(int, 0),
        metavar="N",
        help="refuse to start (exit 2, nothing sent) if more than N rows would change; counted "
        "before the snapshot: rows already at their target count too (apply: the plan's "
        "change rows; job: the query's selection)",
    )
    safety.add_argument(
        "--expect-rows",
        type=_number(int, 0),
        metavar="N",
        help="refuse to start (exit 2, nothing sent) unless the input has exactly N data rows "
        "(apply: the plan's change rows; job: the query selects exactly N)",
    )
    safety.add_argument(
        "--yes",
        action="store_true",
        help=f"do not ask before changing more than {CONFIRM_ABOVE} rows (asked only when "
        "stdin and stdout are terminals; never on a dry run or plan)",
    )
    output = parser.add_argument_group("output")
    output.add_argument(
        "--dry-run", action="store_true", help="validate and write the report; send nothing"
    )
    output.add_argument(
        "--run-dir",
        type=Path,
        metavar="DIR",
        help="where the run's files go (default runs/<UTC time>-<input name>/)",
    )
    output.add_argument(
        "--report",
        type=Path,
        metavar="PATH",
        help="report file, .csv, .parquet or .jsonl (default <run dir>/report.csv)",
    )
    output.add_argument("--quiet", action="store_true", help="no progress display")
    output.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="text: progress and messages for people; json: one JSON object per event on "
        "stderr (start, progress, stop, summary) and nothing else, for schedulers",
    )


def _add_read_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of the commands that only read (export, verify): how to reach the API."""
    source = parser.add_argument_group("API")
    _add_token_argument(source)
    source.add_argument(
        "--base-url",
        metavar="URL",
        default=None,
        help=f"the API's base URL (default {DEFAULT_BASE_URL}, or {BASE_URL_VARIABLE}); "
        "plain http:// only for loopback hosts",
    )
    source.add_argument(
        "--sandbox",
        action="store_true",
        help="read the bundled sandbox, started on a free loopback port with Mateo's limits "
        "and sample_data/ (no token needed; it ends with the command)",
    )
    sending = parser.add_argument_group("sending")
    sending.add_argument(
        "--rate",
        type=_rate,
        default=2.0,
        metavar="RPS",
        help="requests per second, or 'unlimited' (default 2: Mateo allows 2/s, 10,000/day)",
    )
    sending.add_argument(
        "--max-attempts",
        type=_number(int, 1),
        default=5,
        metavar="N",
        help="attempts per request on 429, 5xx, timeouts and connection errors (default 5)",
    )
    sending.add_argument(
        "--timeout",
        type=_number(float, 0.001),
        default=10.0,
        metavar="S",
        help="seconds per request (default 10; Mateo cuts requests off at 2 s)",
    )
    quota = parser.add_argument_group("daily budget")
    quota.add_argument(
        "--daily-quota",
        type=_number(int, 1),
        default=DEFAULT_DAILY_QUOTA,
        metavar="N",
        help="requests the account may send per day, shared by every run on this machine "
        f"(default {DEFAULT_DAILY_QUOTA:,})",
    )
    quota.add_argument(
        "--max-requests",
        type=_number(int, 1),
        metavar="N",
        help="the most requests this command may send; then it stops, writing nothing",
    )
    quota.add_argument(
        "--quota-reset-utc",
        default="00:00",
        metavar="HH:MM",
        help="when the API's day starts, in UTC (default 00:00)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress display")


#: The default of every `job` flag: the job file's value (or the default) applies.
_NOT_GIVEN: Any = object()


def build_parser(*, sandbox_flags: bool = True) -> argparse.ArgumentParser:
    """The command's parser; without `sandbox_flags`, `mateo-bulk sandbox` is listed but has
    no flags, and the sandbox (its web server) is not imported."""
    parser = _Parser(
        prog="mateo-bulk",
        description="Change thousands of Mateo conversations at once, safely.",
    )
    parser.add_argument("--version", action="version", version=f"mateo-bulk {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run_parser = commands.add_parser(
        "run",
        help="apply the rows of a CSV or Parquet file to Mateo and write a per-row report",
        description="Apply the rows of a CSV or Parquet file to Mateo; write a per-row report.",
    )
    _add_run_arguments(run_parser)
    _add_notify_argument(run_parser)
    _add_metrics_argument(run_parser)
    run_parser.set_defaults(handler=_run_command)

    plan_parser = commands.add_parser(
        "plan",
        help="read the rows' current values and write a plan (before, after); change nothing",
        description="Read the current values of the input's conversations and write a plan: "
        "one row per input row with its values before and after and whether it would change. "
        "Apply it with `mateo-bulk apply`.",
    )
    _add_run_arguments(plan_parser)
    plan_parser.set_defaults(handler=_plan_command)

    apply_parser = commands.add_parser(
        "apply",
        help="apply exactly the `change` rows of a plan, guarded by their planned values",
        description="Apply the `change` rows of a plan made by `mateo-bulk plan`. Each PATCH "
        "carries the values the plan read, so a row changed since is left alone (conflict).",
    )
    _add_run_arguments(apply_parser)
    apply_parser.set_defaults(handler=_apply_command)

    job_parser = commands.add_parser(
        "job",
        help="run a job file (.toml): its source (a file or a query), values, limits and output",
        description="Run a job file: a file or query source, the values to set, limits and "
        "output, reviewed in one place. Every run flag is also a key of the file; a flag "
        "given here overrides the file.",
    )
    job_parser.add_argument("job_file", metavar="FILE", type=Path, help="the job file (.toml)")
    job_parser.add_argument(
        "--check",
        action="store_true",
        help="check the job file, its source file and the flags without the network; send nothing",
    )
    _add_run_arguments(job_parser, with_input=False)
    _add_notify_argument(job_parser, " (replaces [notify] url; its `on` still applies)")
    _add_metrics_argument(job_parser, " (replaces [output] metrics_file)")
    # A flag not given must not override the file, so here every flag defaults to "not given".
    job_parser.set_defaults(
        **{
            action.dest: None if isinstance(action, argparse._AppendAction) else _NOT_GIVEN
            for action in job_parser._actions
            if action.dest not in ("help", "job_file", "check")
        },
        handler=_job_command,
    )

    resume_parser = commands.add_parser(
        "resume",
        help="continue a stopped run: rows already done are not sent again",
        description="Continue a stopped run from its journal; rows with a final outcome are "
        "not sent again. The token is read again (it is never stored).",
    )
    resume_parser.add_argument("run_dir", metavar="RUN_DIR", type=Path)
    _add_token_argument(resume_parser)
    resume_parser.add_argument(
        "--retry-failed", action="store_true", help="also send the rows that ended `failed`"
    )
    resume_parser.add_argument(
        "--report", type=Path, metavar="PATH", help="report file (default: the run's own)"
    )
    resume_parser.add_argument("--quiet", action="store_true", help="no progress display")
    steering = resume_parser.add_argument_group(
        "steering", "how the rest is sent (the run's own settings are kept otherwise)"
    )
    steering.add_argument(
        "--base-url",
        metavar="URL",
        default=_NOT_GIVEN,
        help="the API's base URL for the rest of the run",
    )
    steering.add_argument(
        "--sandbox",
        action="store_true",
        help="continue against a fresh bundled sandbox (for runs started with --sandbox: the "
        "first sandbox and its changes are gone)",
    )
    steering.add_argument(
        "--rate", type=_rate, default=_NOT_GIVEN, metavar="RPS", help="requests per second"
    )
    steering.add_argument(
        "--concurrency",
        type=_number(int, 1),
        default=_NOT_GIVEN,
        metavar="N",
        help="requests in flight at most",
    )
    steering.add_argument(
        "--max-requests",
        type=_number(int, 1),
        default=_NOT_GIVEN,
        metavar="N",
        help="the most requests this session",
    )
    steering.add_argument(
        "--max-wait",
        type=_number(float, 0),
        default=_NOT_GIVEN,
        metavar="S",
        help="the longest 429 wait before stopping",
    )
    steering.add_argument(
        "--wait",
        action=argparse.BooleanOptionalAction,
        default=_NOT_GIVEN,
        help="sleep until the budget or limit resets (--no-wait: stop instead)",
    )
    steering.add_argument(
        "--log-format", choices=("text", "json"), default="text", help="text or json events"
    )
    _add_notify_argument(resume_parser)
    _add_metrics_argument(resume_parser, " (never stored with the run: give it on every resume)")
    resume_parser.set_defaults(handler=_resume_command)

    status_parser = commands.add_parser(
        "status", help="show a run's progress, outcomes and settings, finished or not"
    )
    status_parser.add_argument("run_dir", metavar="RUN_DIR", type=Path)
    status_parser.set_defaults(handler=_status_command)

    report_parser = commands.add_parser(
        "report", help="write a run's report again, in another format or place"
    )
    report_parser.add_argument("run_dir", metavar="RUN_DIR", type=Path)
    report_parser.add_argument(
        "--report",
        type=Path,
        metavar="PATH",
        required=True,
        help="the report file: .csv, .parquet or .jsonl (a line per row), or .html (the run "
        "report: counts, timeline, transitions, failures by reason, what to run next)",
    )
    report_parser.set_defaults(handler=_report_command)

    doctor_parser = commands.add_parser(
        "doctor",
        help="check, harmlessly, how this account's API answers what Mateo does not document",
        description="Ask the API the questions Mateo's docs leave open (answer shapes, in. "
        "filters, URL length, rate-limit headers, error bodies) with fewer than 20 requests that "
        "cannot change anything; print a verdict per question and store the answers.",
    )
    _add_token_argument(doctor_parser)
    doctor_parser.add_argument(
        "--base-url",
        metavar="URL",
        default=None,
        help=f"the API's base URL (default {DEFAULT_BASE_URL}, or {BASE_URL_VARIABLE})",
    )
    doctor_parser.add_argument(
        "--sandbox",
        action="store_true",
        help="diagnose the bundled sandbox, started with Mateo's limits (no token needed)",
    )
    doctor_parser.add_argument(
        "--json", action="store_true", help="print one JSON document instead of the verdicts"
    )
    doctor_parser.set_defaults(handler=_doctor_command)

    export_parser = commands.add_parser(
        "export",
        help="write the conversations some filters select, with their current values, as an "
        "input file",
        description="Write the conversations that every --where filter selects, in id order, "
        "with their current inbox_id, assignee_id and status, to a .csv or .parquet file: the "
        "start of a migration file. Edit the target columns and give the file to plan or run. "
        "The expect_* columns hold the same current values and guard each row: a conversation "
        "changed after the export is left alone (conflict); delete them to overwrite. Reads "
        "only (one GET per 50 conversations, paced and counted in the daily budget).",
    )
    export_parser.add_argument(
        "--where",
        metavar="COLUMN=OP.VALUE",
        action="append",
        required=True,
        help="a filter as in a job file's [source.query], e.g. status=eq.open, "
        "latest_message_created_at=lt.{now-30d}, 'or=(status.eq.open,assignee_id.is.null)' "
        "(repeatable; all must match)",
    )
    export_parser.add_argument(
        "--output",
        metavar="PATH",
        type=Path,
        required=True,
        help="the file to write: .csv or .parquet (written whole, or not at all)",
    )
    export_parser.add_argument("--force", action="store_true", help="replace --output if it exists")
    _add_read_arguments(export_parser)
    export_parser.set_defaults(handler=_export_command)

    verify_parser = commands.add_parser(
        "verify",
        help="check whether the input's conversations are at their targets now; change nothing",
        description="Read the current values of the input's conversations and say, row by row, "
        "whether each is at its targets (at_target), is not (differs), no longer exists (gone) "
        "or cannot be checked (invalid). Reads only. Exit 0 when every row is at its targets, "
        "1 otherwise.",
    )
    verify_parser.add_argument(
        "input",
        metavar="INPUT",
        help="a .csv, .parquet, .xlsx, .xlsm, .xls or .ods file; - reads CSV from stdin",
    )
    verify_parser.add_argument(
        "--map",
        metavar="FIELD=COLUMN",
        action="append",
        default=[],
        type=_assignment,
        help="read FIELD from COLUMN, as the run did (repeatable)",
    )
    verify_parser.add_argument(
        "--set",
        metavar="FIELD=VALUE",
        action="append",
        default=[],
        type=_assignment,
        help="FIELD's target for every row, as the run had it (repeatable)",
    )
    verify_parser.add_argument(
        "--delimiter", metavar="CHAR", help="CSV delimiter (default: detected from the header)"
    )
    verify_parser.add_argument(
        "--sheet",
        metavar="NAME|N",
        help="the sheet of a workbook to read: its name, or its number from 1 (default: the first)",
    )
    verify_parser.add_argument(
        "--report",
        type=Path,
        metavar="PATH",
        help="write one line per row (state, targets, current values, what differs) to this "
        ".csv or .parquet file",
    )
    _add_read_arguments(verify_parser)
    verify_parser.set_defaults(handler=_verify_command)

    sandbox_parser = commands.add_parser(
        "sandbox", help="serve a local simulator of Mateo's conversation API"
    )
    if sandbox_flags:
        # Imports the sandbox's server (uvicorn and the ASGI app): a tenth of a second that
        # only `mateo-bulk sandbox` needs.
        from pipeline.sandbox import command as sandbox_command

        sandbox_command.configure_parser(sandbox_parser)
        sandbox_parser.set_defaults(handler=sandbox_command.run_command)
    return parser


def _read_token(args: argparse.Namespace) -> str:
    if args.token_file:
        path = Path(args.token_file)
        try:
            mode = path.stat().st_mode
            token = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            raise InputError(f"--token-file {path}: no such file") from None
        except (OSError, UnicodeDecodeError) as error:
            raise InputError(
                f"--token-file {path}: cannot read it ({type(error).__name__})"
            ) from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            warning = f"{path} is readable by other users; chmod 600 it"
            if getattr(args, "log_format", "text") == "json":
                from pipeline.commands.events import JsonEvents

                JsonEvents().emit("warning", message=warning)
            else:
                print(f"mateo-bulk: warning: {warning}", file=sys.stderr)
        if not token:
            raise InputError(f"--token-file {path} is empty")
        return token
    return os.environ.get(TOKEN_VARIABLE, "").strip()


def _settings(args: argparse.Namespace) -> RunSettings:
    column_map = {}
    for assignment in args.map:
        field, _, column = assignment.partition("=")
        column_map[field.strip()] = column.strip()
    return RunSettings(
        input=args.input,
        # A dry run needs no token; with one, it can show the day's budget.
        token="" if args.sandbox else _read_token(args),
        base_url=args.base_url or os.environ.get(BASE_URL_VARIABLE) or DEFAULT_BASE_URL,
        column_map=column_map,
        fixed_values=parse_fixed_values(args.set),
        rate=args.rate,
        concurrency=args.concurrency,
        max_attempts=args.max_attempts,
        timeout=args.timeout,
        batch_size=args.batch_size,
        strict=args.strict,
        dry_run=args.dry_run,
        run_dir=args.run_dir,
        report=args.report,
        delimiter=args.delimiter,
        sheet=args.sheet,
        transport=args.transport,
        daily_quota=args.daily_quota,
        max_requests=args.max_requests,
        quota_reset_utc=args.quota_reset_utc,
        max_wait=args.max_wait,
        wait=args.wait,
        snapshot=args.snapshot,
        guarded=args.guarded,
        max_changes=args.max_changes,
        expect_rows=args.expect_rows,
    )


@contextmanager
def _progress_display(quiet: bool) -> Iterator[Callable[..., None] | None]:
    if quiet:
        yield None
        return
    from pipeline.cli.progress import LiveProgress, PlainProgress

    display = LiveProgress() if sys.stderr.isatty() else PlainProgress()
    try:
        yield display
    finally:
        display.close()


def _run_command(args: argparse.Namespace) -> int:
    from pipeline.commands.notify import notifier_from_flag, notify_run

    notifier = notifier_from_flag(args.notify_url)  # a bad URL: exit 2 before any request
    _check_metrics_file(args.metrics_file)
    settings = _settings(args)
    if args.dry_run:
        args.sandbox = False  # a dry run sends nothing: no sandbox needed
    with _sandbox_for(args, settings, quiet=args.log_format == "json") as settings:
        summary = _run_with_display(settings, args.quiet, args.log_format, ask=_may_ask(args))
    if args.log_format == "json":
        from pipeline.cli.progress import summary_text

        print(summary_text(summary))
    else:
        _print_summary(summary, sandbox=args.sandbox)
    _write_run_metrics(args, summary)
    notify_run(
        notifier,
        summary,
        command=f"run {args.input}",
        token=settings.token,
        json_log=args.log_format == "json",
        sandbox=args.sandbox,
    )
    return summary.exit_code


def _plan_command(args: argparse.Namespace) -> int:
    from pipeline.cli.progress import plan_summary_text

    settings = dataclasses.replace(_settings(args), plan_only=True)
    with _sandbox_for(args, settings) as settings:
        summary = _run_with_display(settings, args.quiet, args.log_format)
    print(plan_summary_text(summary))
    _print_stop(summary)
    return summary.exit_code


def _apply_command(args: argparse.Namespace) -> int:
    from pipeline.orchestrator.runner import apply_plan

    settings = _settings(args)
    with _sandbox_for(args, settings) as settings:
        with _progress_display(args.quiet) as display:
            # apply sends the plan's change rows as they are: no snapshot skips any of them.
            exact = dataclasses.replace(settings, snapshot=False)
            confirm = _confirmation(exact, display) if _may_ask(args) else None
            summary = apply_plan(
                args.input, settings, on_progress=display, confirm=confirm, **_as_a_command()
            )
    _print_summary(summary)
    return summary.exit_code


@contextmanager
def _sandbox_for(
    args: argparse.Namespace, settings: RunSettings, *, quiet: bool = False
) -> Iterator[RunSettings]:
    """The settings to use: pointed at a bundled sandbox, with Mateo's limits, with --sandbox."""
    if not args.sandbox:
        yield settings
        return
    with _bundled_sandbox(quiet) as (base_url, token):
        yield dataclasses.replace(settings, base_url=base_url, token=token)


@contextmanager
def _bundled_sandbox(quiet: bool) -> Iterator[tuple[str, str]]:
    """A sandbox with Mateo's limits on a free loopback port: its base URL and token."""
    from pipeline.api.account import STATE_DIR_VARIABLE
    from pipeline.sandbox import mateo_limits_sandbox

    # The sandbox's requests are not any real account's: they get a budget ledger of their own
    # that disappears with the run, so demos never spend (or fill) a real one.
    with tempfile.TemporaryDirectory() as state, mateo_limits_sandbox() as sandbox:
        os.environ[STATE_DIR_VARIABLE] = state
        if not quiet:
            print(f"mateo-bulk: sandbox serving {sandbox.base_url}", file=sys.stderr)
        yield sandbox.base_url, sandbox.token


def _run_with_display(
    settings: RunSettings, quiet: bool, log_format: str = "text", *, ask: bool = False
) -> RunSummary:
    if log_format == "json":
        from pipeline.commands.events import JsonEvents

        events = JsonEvents()
        events.start(command="run", input=settings.input, dry_run=settings.dry_run)
        confirm = _confirmation(settings) if ask else None
        summary = run(
            settings,
            on_progress=None if quiet else events,
            confirm=confirm,
            stdin=_stdin_for(settings),
            **_as_a_command(),
        )
        events.summary(summary)
        return summary
    with _progress_display(quiet) as display:
        confirm = _confirmation(settings, display) if ask else None
        return run(
            settings,
            on_progress=display,
            confirm=confirm,
            stdin=_stdin_for(settings),
            **_as_a_command(),
        )


def _as_a_command() -> dict[str, Any]:
    """What a run takes from the process when the CLI starts it: SIGINT/SIGTERM stop it, and
    it starts from the answers `mateo-bulk doctor` stored for the account."""
    from pipeline.api.account import load_answers

    return {"handle_signals": True, "stored_answers": load_answers}


def _stdin_for(settings: RunSettings) -> BinaryIO | None:
    """The CLI's stdin, for an input of "-"."""
    return sys.stdin.buffer if str(settings.input) == "-" else None


def _may_ask(args: argparse.Namespace) -> bool:
    """Only a person can answer: stdin and stdout both terminals, and no --yes."""
    return args.yes is not True and sys.stdin.isatty() and sys.stdout.isatty()


def _confirmation(settings: RunSettings, display: Any = None) -> Callable[[int], bool]:
    """Asks on the terminal before more than CONFIRM_ABOVE rows change; only "y" goes on."""

    def confirm(count: int) -> bool:
        if count <= CONFIRM_ABOVE:
            return True
        fewer = " (fewer if some are already at their target)" if settings.snapshot else ""
        question = (
            f"mateo-bulk: {count:,} rows will change on {settings.base_url}{fewer} — "
            "continue? [y/N] "
        )
        # The live bar would draw over the question; the event loop's own Ctrl-C handler
        # would only act once the answer is in, so Ctrl-C here means "no", at once.
        with getattr(display, "paused", contextlib.nullcontext)():
            previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            try:
                print(question, end="", flush=True)
                answer = sys.stdin.readline()
            except KeyboardInterrupt:
                answer = ""
            finally:
                signal.signal(signal.SIGINT, previous)
            if not answer.endswith("\n"):
                print(flush=True)  # Ctrl-C or Ctrl-D: end the question's line
        return answer.strip().lower() in ("y", "yes")

    return confirm


def _job_command(args: argparse.Namespace) -> int:
    from pipeline.commands.events import JsonEvents
    from pipeline.commands.jobs import job_options, load_job

    events = JsonEvents() if args.log_format == "json" else None
    try:
        spec = load_job(args.job_file)
        flags = job_flags(args)
        options = job_options(spec, flags)
        if events is None and options["log_format"] == "json":
            events = JsonEvents()
        # The file's metrics_file (or the flag), where main() also writes a job's error.
        args.metrics_file = options["metrics_file"]
        return _run_job(args, spec, flags, events)
    except MateoBulkError as error:
        if events is None:
            raise
        events.stop(error, exit_code=error.exit_code)
        _write_error_metrics(args, error.exit_code)
        return error.exit_code


def job_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The flags given to `job`, by option name, as `plan_job` takes them."""
    flags = {
        name: value
        for name, value in vars(args).items()
        if value is not _NOT_GIVEN and not (name in ("map", "set") and value is None)
    }
    if "rate" in flags and flags["rate"] is None:
        flags["rate"] = "unlimited"  # --rate unlimited; to plan_job, None means "not given"
    return flags


def _run_job(args: argparse.Namespace, spec: Any, flags: dict[str, Any], events: Any | None) -> int:
    from pipeline.cli.progress import summary_text
    from pipeline.commands import jobs
    from pipeline.commands.metrics import RunFigures
    from pipeline.commands.notify import notify_job, notify_stopped, ordered

    options = jobs.job_options(spec, flags)
    base_url = os.environ.get(BASE_URL_VARIABLE) or DEFAULT_BASE_URL
    notifier = jobs.job_notifier(spec, flags.get("notify_url"))
    _check_metrics_file(options["metrics_file"])
    if args.check:
        plan = jobs.plan_job(spec, flags, default_base_url=base_url)
        jobs.check_job(plan)
        print(jobs.describe_job(plan))
        if notifier is not None:
            print(f"  notify: {notifier.host} on {', '.join(ordered(notifier.on))}")
        print(f"{spec.path}: ok")
        return 0

    def run_notified(plan: jobs.JobPlan, **hooks: Any) -> jobs.JobSummary:
        try:
            return jobs.run_job(plan, **hooks, **_as_a_command())
        except (RunStopped, SafetyError) as error:
            # A stop before the run could sum up (in the query's GETs) is worth an alert too.
            notify_stopped(
                notifier,
                error,
                command=f"job {spec.name}",
                token=plan.settings.token,
                json_log=events is not None,
            )
            raise

    def run_planned(plan: jobs.JobPlan) -> jobs.JobSummary:
        if events is not None:
            events.start(
                command="job",
                job=spec.name,
                description=spec.description,
                source="query" if plan.query else "file",
                dry_run=plan.settings.dry_run,
                run_dir=plan.settings.run_dir,
            )
            return run_notified(
                plan,
                on_progress=None if options["quiet"] else events,
                on_selected=events.selected,
                confirm=_confirmation(plan.settings) if _may_ask(args) else None,
            )
        with _progress_display(options["quiet"]) as display:
            confirm = _confirmation(plan.settings, display) if _may_ask(args) else None
            return run_notified(
                plan, on_progress=display, on_selected=_print_selected, confirm=confirm
            )

    if options["sandbox"]:
        plan = jobs.plan_job(spec, flags, default_base_url=base_url)
        # A query job reads its rows even on a dry run, so the sandbox starts for one too.
        sandbox = argparse.Namespace(sandbox=True)
        with _sandbox_for(sandbox, plan.settings, quiet=events is not None) as settings:
            if events is not None:
                events.emit("sandbox", base_url=settings.base_url)
            summary = run_planned(dataclasses.replace(plan, settings=settings))
    else:
        token = _read_token(argparse.Namespace(token_file=options["token_file"]))
        summary = run_planned(jobs.plan_job(spec, flags, token=token, default_base_url=base_url))
    if summary.run is None:
        print(
            f"the query selected no conversations: nothing to change "
            f"({summary.selected.requests if summary.selected else 0} requests)\n"
            f"report: {summary.report_path}\nrun directory: {summary.run_dir}"
        )
    elif events is not None:
        print(summary_text(summary.run))
    else:
        _print_summary(summary.run)
    share = summary.plan.max_failed_share
    if share is not None and summary.run is not None:
        print(f"failed share: {summary.failed_share:.1%} (max_failed_share {share:g})")
        if summary.failed_share > share and events is None:
            print(
                f"mateo-bulk: {summary.failed_rows:,} of {summary.total_rows:,} rows failed, "
                f"more than the job's max_failed_share {share:g}: exit 1",
                file=sys.stderr,
            )
    if events is not None:
        events.job_summary(summary)
    _write_metrics(args, RunFigures.of_job(summary, duration=_duration(args)))
    notify_job(
        notifier,
        summary,
        token=summary.plan.settings.token,
        json_log=events is not None,
        sandbox=options["sandbox"],
    )
    return summary.exit_code


def _print_selected(selected: Any) -> None:
    dates = ", ".join(f"{name} = {value}" for name, value in selected.query.dates.items())
    requests = f"{selected.requests:,} request{'s' if selected.requests != 1 else ''}"
    print(
        f"mateo-bulk: the query selected {selected.rows:,} conversations with {requests}"
        + (f" ({dates})" if dates else ""),
        file=sys.stderr,
    )


def _resume_command(args: argparse.Namespace) -> int:
    from pipeline.commands.notify import notifier_from_flag, notify_run
    from pipeline.orchestrator.runner import RESUME_OVERRIDES

    # Never stored with the run (the URL is a credential): each resume gives it again.
    notifier = notifier_from_flag(args.notify_url)
    _check_metrics_file(args.metrics_file)
    overrides = {
        name: getattr(args, name)
        for name in RESUME_OVERRIDES
        if getattr(args, name) is not _NOT_GIVEN
    }
    with contextlib.ExitStack() as stack:
        if args.sandbox:
            overrides["base_url"], token = stack.enter_context(
                _bundled_sandbox(args.log_format == "json")
            )
        else:
            token = _read_token(args)
        resume_with = functools.partial(
            resume,
            args.run_dir,
            token=token,
            retry_failed=args.retry_failed,
            report=args.report,
            overrides=overrides,
            **_as_a_command(),
        )
        if args.log_format == "json":
            from pipeline.commands.events import JsonEvents

            events = JsonEvents()
            events.start(command="resume", run_dir=args.run_dir)
            summary = resume_with(on_progress=None if args.quiet else events)
            events.summary(summary)
        else:
            with _progress_display(args.quiet) as display:
                summary = resume_with(on_progress=display)
    _print_summary(summary)
    _write_run_metrics(args, summary)
    notify_run(
        notifier,
        summary,
        command=f"resume {args.run_dir}",
        token=token,
        json_log=args.log_format == "json",
        sandbox=args.sandbox,
        resumed=True,
    )
    return summary.exit_code


def _status_command(args: argparse.Namespace) -> int:
    status = run_status(args.run_dir)
    meta = status.meta
    print(f"run: {status.run_dir}")
    print(
        f"state: {status.state}"
        + (f" ({meta['stop_reason']})" if status.state == "stopped" else "")
    )
    print(f"input: {meta.get('input')} ({status.total_rows:,} rows)")
    print(f"progress: {status.done:,} of {status.total_rows:,} rows done")
    for outcome, count in status.counts.items():
        if count:
            print(f"  {outcome.value:<10} {count:>10,}")
    print("settings:")
    for name, value in meta.get("settings", {}).items():
        print(f"  {name}: {value}")
    return 0


def _report_command(args: argparse.Namespace) -> int:
    rows = export_report(args.run_dir, args.report)
    print(f"report: {args.report} ({rows:,} rows)")
    return 0


def _doctor_command(args: argparse.Namespace) -> int:
    import functools
    import json

    import anyio

    from pipeline.commands.doctor import diagnose, report_text

    if args.sandbox:
        from pipeline.sandbox import mateo_limits_sandbox

        with mateo_limits_sandbox() as sandbox:
            print(f"mateo-bulk: sandbox serving {sandbox.base_url}", file=sys.stderr)
            # The sandbox's answers are not any account's: nothing is stored.
            check = functools.partial(diagnose, sandbox.base_url, sandbox.token, save=False)
            report = anyio.run(check)
    else:
        base_url = args.base_url or os.environ.get(BASE_URL_VARIABLE) or DEFAULT_BASE_URL
        report = anyio.run(functools.partial(diagnose, base_url, _read_token(args)))
    print(json.dumps(report.to_dict(), indent=2) if args.json else report_text(report))
    if report.stopped:
        print(f"mateo-bulk: doctor stopped early: {report.stopped}", file=sys.stderr)
    return report.exit_code


@contextmanager
def _read_settings(args: argparse.Namespace) -> Iterator[Any]:
    """The ReadSettings of export and verify: pointed at a bundled sandbox with --sandbox."""
    from pipeline.commands.export import ReadSettings

    settings = ReadSettings(
        token="" if args.sandbox else _read_token(args),
        base_url=args.base_url or os.environ.get(BASE_URL_VARIABLE) or DEFAULT_BASE_URL,
        rate=args.rate,
        max_attempts=args.max_attempts,
        timeout=args.timeout,
        daily_quota=args.daily_quota,
        max_requests=args.max_requests,
        quota_reset_utc=args.quota_reset_utc,
    )
    if not args.sandbox:
        yield settings
        return
    with _bundled_sandbox(args.quiet) as (base_url, token):
        yield dataclasses.replace(settings, base_url=base_url, token=token)


def _read_progress(label: str, quiet: bool) -> Callable[[int, int], None] | None:
    """A one-line counter on a terminal; nothing in a pipe or a log."""
    if quiet or not sys.stderr.isatty():
        return None

    def show(rows: int, requests: int) -> None:
        print(f"\r{label}: {rows:,} rows, {requests:,} requests", end="", file=sys.stderr)

    return show


def _end_progress(progress: Callable[[int, int], None] | None) -> None:
    if progress is not None:
        print(file=sys.stderr)


def _export_command(args: argparse.Namespace) -> int:
    from pipeline.commands.export import check_output_path, check_query, export_rows, parse_where

    filters = parse_where(args.where)
    # Checked before a sandbox starts or a token is read: a bad flag costs nothing.
    check_query(filters)
    check_output_path(args.output, flag="--output", force=args.force)
    progress = _read_progress("export", args.quiet)
    try:
        with _read_settings(args) as settings:
            summary = export_rows(
                filters, args.output, settings, force=args.force, on_progress=progress
            )
    except RunStopped as error:
        _end_progress(progress)
        print(
            f"mateo-bulk: export stopped before the end: {error}; nothing was written to "
            f"{args.output}, run the export again",
            file=sys.stderr,
        )
        return error.exit_code
    _end_progress(progress)
    requests = f"{summary.requests:,} request{'s' if summary.requests != 1 else ''}"
    print(f"export: {summary.rows:,} conversations written to {summary.path} ({requests})")
    written = ", ".join(f"{column}={value}" for column, value in summary.query.filters.items())
    dates = ", ".join(f"{name} = {value}" for name, value in summary.query.dates.items())
    print(f"  filters: {written}" + (f" ({dates})" if dates else ""))
    if summary.rows:
        print(
            "  next: edit the targets (inbox_id, assignee_id, status; expect_* guard each row), "
            f"then: mateo-bulk plan {summary.path}"
        )
    return 0


def _verify_command(args: argparse.Namespace) -> int:
    from pipeline.commands.export import VerifyState, verify_rows

    column_map = {}
    for assignment in args.map:
        field, _, column = assignment.partition("=")
        column_map[field.strip()] = column.strip()
    fixed_values = parse_fixed_values(args.set)
    progress = _read_progress("verify", args.quiet)
    try:
        with _read_settings(args) as settings:
            summary = verify_rows(
                args.input,
                settings,
                column_map=column_map,
                fixed_values=fixed_values,
                delimiter=args.delimiter,
                sheet=args.sheet,
                report=args.report,
                on_progress=progress,
            )
    finally:
        _end_progress(progress)
    counts = summary.counts
    requests = f"{summary.requests:,} request{'s' if summary.requests != 1 else ''}"
    print(
        f"verify: {summary.rows:,} rows: {counts[VerifyState.AT_TARGET]:,} at target, "
        f"{counts[VerifyState.DIFFERS]:,} differ, {counts[VerifyState.GONE]:,} gone, "
        f"{counts[VerifyState.INVALID]:,} invalid ({requests})"
    )
    for example in summary.examples:
        print(f"  {example}")
    others = summary.rows - counts[VerifyState.AT_TARGET] - len(summary.examples)
    if others > 0:
        where = "" if summary.report_path else " (--report PATH lists every row)"
        print(f"  … and {others:,} more not at target{where}")
    if summary.report_path is not None:
        print(f"report: {summary.report_path}")
    return summary.exit_code


def _check_metrics_file(path: str | None) -> None:
    """--metrics-file (or a job's metrics_file) checked before anything is sent: exit 2."""
    if path is not None and path is not _NOT_GIVEN:
        from pipeline.commands.metrics import check_metrics_path

        check_metrics_path(path)


def _duration(args: argparse.Namespace) -> float:
    started = getattr(args, "started", None)
    return 0.0 if started is None else time.monotonic() - started


def _write_run_metrics(args: argparse.Namespace, summary: RunSummary) -> None:
    from pipeline.commands.metrics import RunFigures

    _write_metrics(args, RunFigures.of_run(summary, duration=_duration(args)))


def _write_error_metrics(args: argparse.Namespace, exit_code: int) -> None:
    """The figures of a command that ended in an error (exit 2, 3 or 4 with no summary): the
    exit code, and the last success carried over, so that an alert on either fires."""
    path = getattr(args, "metrics_file", None)
    if path is None or path is _NOT_GIVEN or getattr(args, "check", False):
        return  # (`job --check` runs nothing: the last run's figures stand)
    from pipeline.commands.metrics import RunFigures, check_metrics_path

    try:
        check_metrics_path(path)
    except InputError:
        return  # the path itself was the error, and its message says so
    _write_metrics(args, RunFigures(exit_code=exit_code, duration=_duration(args)))


def _write_metrics(args: argparse.Namespace, figures: Any) -> None:
    """Write the metrics file if one was asked for; a failure is a warning, never an exit code
    (the run is over by now, and its own outcome is what the exit code says)."""
    path = getattr(args, "metrics_file", None)
    if path is None or path is _NOT_GIVEN:
        return
    from pipeline.commands.metrics import write_metrics

    try:
        write_metrics(path, figures)
    except OSError as error:
        warning = (
            f"--metrics-file {path} was not written ({error.strerror or type(error).__name__}); "
            "the run's outcome and exit code are unchanged"
        )
        if getattr(args, "log_format", "text") == "json":
            from pipeline.commands.events import JsonEvents

            JsonEvents().emit("warning", message=warning)
        else:
            print(f"mateo-bulk: warning: {warning}", file=sys.stderr)


def _print_summary(summary: RunSummary, *, sandbox: bool = False) -> None:
    from pipeline.cli.progress import summary_text

    print(summary_text(summary))
    _print_stop(summary, sandbox=sandbox)


def _print_stop(summary: RunSummary, *, sandbox: bool = False) -> None:
    stop = summary.stopped
    if stop is None:
        return
    if isinstance(stop, AuthError):
        advice = (
            f"the API answered {stop.http_status}: {stop}. Set {TOKEN_VARIABLE} or "
            "--token-file to a valid token and run again"
        )
    elif isinstance(stop, SafetyError):
        advice = str(stop)
    elif isinstance(stop, RunStopped):
        advice = f"{stop}; rows not attempted are reported as skipped"
    elif isinstance(stop, InputError):
        # Refused before anything was sent (--strict): nothing stopped early.
        print(f"mateo-bulk: {stop}", file=sys.stderr)
        return
    else:
        advice = str(stop)
    print(f"mateo-bulk: stopped early: {advice}", file=sys.stderr)
    if isinstance(stop, RunStopped):
        # A run on the bundled sandbox cannot go back to it: it ended with the process.
        again = " --sandbox" if sandbox else ""
        print(
            f"mateo-bulk: to continue: mateo-bulk resume {summary.run_dir}{again}",
            file=sys.stderr,
        )


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    # A subcommand is named by its exact word: no other command line reaches the sandbox's.
    parser = build_parser(sandbox_flags="sandbox" in arguments)
    args = parser.parse_args(arguments)
    args.started = time.monotonic()  # the duration --metrics-file reports
    try:
        return int(args.handler(args))
    except MateoBulkError as error:
        if getattr(args, "log_format", None) == "json":
            from pipeline.commands.events import JsonEvents

            JsonEvents().stop(error, exit_code=error.exit_code)
            _write_error_metrics(args, error.exit_code)
            return error.exit_code
        print(f"mateo-bulk: {error}", file=sys.stderr)
        if isinstance(error, RunStopped) and getattr(args, "run_dir", None):
            print(f"mateo-bulk: to continue: mateo-bulk resume {args.run_dir}", file=sys.stderr)
        _write_error_metrics(args, error.exit_code)
        return error.exit_code
    except KeyboardInterrupt:
        print("mateo-bulk: interrupted", file=sys.stderr)
        _write_error_metrics(args, 3)
        return 3
    except BrokenPipeError:
        # The reader went away (`status RUN | head`): not an error of ours. Python would
        # complain again flushing stdout at exit, so point it at /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
