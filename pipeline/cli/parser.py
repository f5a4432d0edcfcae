"""The `mateo-bulk` parser: every command and its flags (the shared ones: pipeline.cli.flags)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from pipeline import __version__
from pipeline.api.client import BASE_URL_VARIABLE, DEFAULT_BASE_URL
from pipeline.cli.flags import (
    add_input_argument,
    add_log_format_argument,
    add_map_and_set_arguments,
    add_metrics_argument,
    add_notify_argument,
    add_option,
    add_quiet_argument,
    add_read_arguments,
    add_run_arguments,
    add_sandbox_argument,
    add_token_argument,
)
from pipeline.cli.job_command import job_command
from pipeline.cli.read_commands import doctor_command, export_command, verify_command
from pipeline.cli.run_commands import (
    apply_command,
    plan_command,
    report_command,
    resume_command,
    run_command,
    status_command,
)
from pipeline.cli.session import NOT_GIVEN


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        print(f"mateo-bulk: {message} (see {self.prog} --help)", file=sys.stderr)
        raise SystemExit(2)


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
    add_run_arguments(run_parser)
    add_notify_argument(run_parser)
    add_metrics_argument(run_parser)
    run_parser.set_defaults(handler=run_command)

    plan_parser = commands.add_parser(
        "plan",
        help="read the rows' current values and write a plan (before, after); change nothing",
        description="Read the current values of the input's conversations and write a plan: "
        "one row per input row with its values before and after and whether it would change. "
        "Apply it with `mateo-bulk apply`.",
    )
    add_run_arguments(plan_parser)
    plan_parser.set_defaults(handler=plan_command)

    apply_parser = commands.add_parser(
        "apply",
        help="apply exactly the `change` rows of a plan, guarded by their planned values",
        description="Apply the `change` rows of a plan made by `mateo-bulk plan`. Each PATCH "
        "carries the values the plan read, so a row changed since is left alone (conflict).",
    )
    add_run_arguments(apply_parser)
    apply_parser.set_defaults(handler=apply_command)

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
    add_run_arguments(job_parser, with_input=False)
    add_notify_argument(job_parser, " (replaces [notify] url; its `on` still applies)")
    add_metrics_argument(job_parser, " (replaces [output] metrics_file)")
    # A flag not given must not override the file, so here every flag defaults to "not given".
    job_parser.set_defaults(
        **{
            action.dest: None if isinstance(action, argparse._AppendAction) else NOT_GIVEN
            for action in job_parser._actions
            if action.dest not in ("help", "job_file", "check")
        },
        handler=job_command,
    )

    resume_parser = commands.add_parser(
        "resume",
        help="continue a stopped run: rows already done are not sent again",
        description="Continue a stopped run from its journal; rows with a final outcome are "
        "not sent again. The token is read again (it is never stored).",
    )
    resume_parser.add_argument("run_dir", metavar="RUN_DIR", type=Path)
    add_token_argument(resume_parser)
    resume_parser.add_argument(
        "--retry-failed", action="store_true", help="also send the rows that ended `failed`"
    )
    resume_parser.add_argument(
        "--report", type=Path, metavar="PATH", help="report file (default: the run's own)"
    )
    add_quiet_argument(resume_parser)
    steering = resume_parser.add_argument_group(
        "steering", "how the rest is sent (the run's own settings are kept otherwise)"
    )
    # The run's own flags (their type and metavar), NOT_GIVEN unless given.
    add_option(
        steering, "base_url", default=NOT_GIVEN, help="the API's base URL for the rest of the run"
    )
    add_sandbox_argument(
        steering,
        "continue against a fresh bundled sandbox (for runs started with --sandbox: the "
        "first sandbox and its changes are gone)",
    )
    add_option(steering, "rate", default=NOT_GIVEN, help="requests per second")
    add_option(steering, "concurrency", default=NOT_GIVEN, help="requests in flight at most")
    add_option(steering, "max_requests", default=NOT_GIVEN, help="the most requests this session")
    add_option(steering, "max_wait", default=NOT_GIVEN, help="the longest 429 wait before stopping")
    add_option(
        steering,
        "wait",
        action=argparse.BooleanOptionalAction,
        default=NOT_GIVEN,
        help="sleep until the budget or limit resets (--no-wait: stop instead)",
    )
    add_log_format_argument(steering, "text or json events")
    add_notify_argument(resume_parser)
    add_metrics_argument(resume_parser, " (never stored with the run: give it on every resume)")
    resume_parser.set_defaults(handler=resume_command)

    status_parser = commands.add_parser(
        "status", help="show a run's progress, outcomes and settings, finished or not"
    )
    status_parser.add_argument("run_dir", metavar="RUN_DIR", type=Path)
    status_parser.set_defaults(handler=status_command)

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
    report_parser.set_defaults(handler=report_command)

    doctor_parser = commands.add_parser(
        "doctor",
        help="check, harmlessly, how this account's API answers what Mateo does not document",
        description="Ask the API the questions Mateo's docs leave open (answer shapes, in. "
        "filters, URL length, rate-limit headers, error bodies) with fewer than 20 requests that "
        "cannot change anything; print a verdict per question and store the answers.",
    )
    add_token_argument(doctor_parser)
    add_option(
        doctor_parser,
        "base_url",
        default=None,
        help=f"the API's base URL (default {DEFAULT_BASE_URL}, or {BASE_URL_VARIABLE})",
    )
    add_sandbox_argument(
        doctor_parser,
        "diagnose the bundled sandbox, started with Mateo's limits (no token needed)",
    )
    doctor_parser.add_argument(
        "--json", action="store_true", help="print one JSON document instead of the verdicts"
    )
    doctor_parser.set_defaults(handler=doctor_command)

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
    add_read_arguments(export_parser)
    export_parser.set_defaults(handler=export_command)

    verify_parser = commands.add_parser(
        "verify",
        help="check whether the input's conversations are at their targets now; change nothing",
        description="Read the current values of the input's conversations and say, row by row, "
        "whether each is at its targets (at_target), is not (differs), no longer exists (gone) "
        "or cannot be checked (invalid). Reads only. Exit 0 when every row is at its targets, "
        "1 otherwise.",
    )
    add_input_argument(verify_parser)
    add_map_and_set_arguments(
        verify_parser,
        map_help="read FIELD from COLUMN, as the run did (repeatable)",
        set_help="FIELD's target for every row, as the run had it (repeatable)",
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
    add_read_arguments(verify_parser)
    verify_parser.set_defaults(handler=verify_command)

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
