"""The flags several commands share: a run's (each run option's flag made from its RunSettings
field, pipeline.orchestrator.options), the read commands', the token's, notify's and metrics'."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.cli.session import CONFIRM_ABOVE, TOKEN_VARIABLE
from pipeline.orchestrator.options import Choice, Number, RunOption, Switch, Text
from pipeline.orchestrator.settings import run_options


def _option_type(option: RunOption) -> Callable[[str], Any] | None:
    """The argparse type of a run option's flag: its Number's reading, a Path, or the text."""
    kind = option.kind
    if isinstance(kind, Number):
        number = kind

        def parse(text: str) -> Any:
            try:
                return number.from_text(text)
            except ValueError as error:
                raise argparse.ArgumentTypeError(str(error)) from None

        return parse
    if isinstance(kind, Text) and kind.path:
        return Path
    return None


def _option_arguments(option: RunOption) -> dict[str, Any]:
    """add_argument's keywords for a run option's flag, from its RunSettings field."""
    arguments: dict[str, Any] = {"dest": option.name, "help": option.help}
    if isinstance(option.kind, Switch):
        # A switch turns the default around: --strict sets True, --no-guard sets False.
        arguments["action"] = "store_false" if option.default else "store_true"
        return arguments
    arguments["default"] = option.default
    if isinstance(option.kind, Choice):
        arguments["choices"] = option.kind.choices
    if (parse := _option_type(option)) is not None:
        arguments["type"] = parse
    if option.metavar is not None:
        arguments["metavar"] = option.metavar
    return arguments


def _add_options(group: argparse._ActionsContainer, title: str) -> None:
    """The flags of the run options of one `--help` group, in RunSettings' order."""
    for option in run_options():
        if option.group == title:
            group.add_argument(option.flag, **_option_arguments(option))


def _run_option(name: str) -> RunOption:
    return next(option for option in run_options() if option.name == name)


def add_option(group: argparse._ActionsContainer, name: str, **overrides: Any) -> None:
    """The flag of one run option, as `run` has it (the read commands share a few); `overrides`
    replace its keywords, e.g. the help and default of resume's steering or doctor's --base-url."""
    option = _run_option(name)
    group.add_argument(option.flag, **{**_option_arguments(option), **overrides})


def assignment(text: str) -> str:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} must look like FIELD=VALUE")
    return text


def add_token_argument(parser: argparse._ActionsContainer) -> None:
    parser.add_argument(
        "--token-file",
        metavar="PATH",
        help=f"read the API token from this file (default: the {TOKEN_VARIABLE} variable)",
    )


def add_input_argument(parser: argparse._ActionsContainer) -> None:
    parser.add_argument(
        "input",
        metavar="INPUT",
        help="a .csv, .parquet, .xlsx, .xlsm, .xls or .ods file; - reads CSV from stdin",
    )


def add_map_and_set_arguments(
    parser: argparse._ActionsContainer, *, map_help: str, set_help: str
) -> None:
    """--map FIELD=COLUMN and --set FIELD=VALUE, each repeatable."""
    parser.add_argument(
        "--map",
        metavar="FIELD=COLUMN",
        action="append",
        default=[],
        type=assignment,
        help=map_help,
    )
    parser.add_argument(
        "--set",
        metavar="FIELD=VALUE",
        action="append",
        default=[],
        type=assignment,
        help=set_help,
    )


def add_sandbox_argument(parser: argparse._ActionsContainer, help: str) -> None:
    parser.add_argument("--sandbox", action="store_true", help=help)


def add_quiet_argument(parser: argparse._ActionsContainer) -> None:
    parser.add_argument("--quiet", action="store_true", help="no progress display")


def add_log_format_argument(parser: argparse._ActionsContainer, help: str) -> None:
    parser.add_argument("--log-format", choices=("text", "json"), default="text", help=help)


def add_notify_argument(parser: argparse._ActionsContainer, extra: str = "") -> None:
    parser.add_argument(
        "--notify-url",
        metavar="URL",
        help="when the run finishes or stops, post a Slack-compatible message (counts, exit "
        "code, how to resume or undo) to this webhook; env:NAME or file:PATH read the URL from "
        "a variable or a file; https://, or http:// for loopback only" + extra,
    )


def add_metrics_argument(parser: argparse._ActionsContainer, extra: str = "") -> None:
    parser.add_argument(
        "--metrics-file",
        metavar="PATH",
        help="when the command ends, write the run's figures (rows by outcome, requests, 429s, "
        "retries, duration, exit code, time of the last success) to this .prom file for "
        "node_exporter's textfile collector, replacing it at once" + extra,
    )


def add_run_arguments(parser: argparse.ArgumentParser, *, with_input: bool = True) -> None:
    if with_input:
        add_input_argument(parser)
    source = parser.add_argument_group("API")
    add_token_argument(source)
    _add_options(source, "API")
    add_sandbox_argument(
        source,
        "run against the bundled sandbox, started on a free loopback port with Mateo's "
        "limits and sample_data/ (no token needed)",
    )
    columns = parser.add_argument_group("columns and values")
    add_map_and_set_arguments(
        columns,
        map_help="read FIELD (conversation_id, inbox_id, assignee_id, status) from COLUMN",
        set_help="set FIELD to VALUE on every row, over the file's column (e.g. status=closed)",
    )
    _add_options(columns, "columns and values")
    _add_options(parser.add_argument_group("sending"), "sending")
    _add_options(parser.add_argument_group("daily budget"), "daily budget")
    safety = parser.add_argument_group("before writing")
    _add_options(safety, "before writing")
    safety.add_argument(
        "--yes",
        action="store_true",
        help=f"do not ask before changing more than {CONFIRM_ABOVE} rows (asked only when "
        "stdin and stdout are terminals; never on a dry run or plan)",
    )
    output = parser.add_argument_group("output")
    _add_options(output, "output")
    add_quiet_argument(output)
    add_log_format_argument(
        output,
        "text: progress and messages for people; json: one JSON object per event on "
        "stderr (start, progress, stop, summary) and nothing else, for schedulers",
    )


def add_read_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of the commands that only read (export, verify): how to reach the API."""
    source = parser.add_argument_group("API")
    add_token_argument(source)
    add_option(source, "base_url")
    add_sandbox_argument(
        source,
        "read the bundled sandbox, started on a free loopback port with Mateo's limits "
        "and sample_data/ (no token needed; it ends with the command)",
    )
    sending = parser.add_argument_group("sending")
    for name in ("rate", "max_attempts", "timeout"):
        add_option(sending, name)
    quota = parser.add_argument_group("daily budget")
    add_option(quota, "daily_quota")
    add_option(
        quota,
        "max_requests",
        help="the most requests this command may send; then it stops, writing nothing",
    )
    add_option(quota, "quota_reset_utc")
    add_quiet_argument(parser)
