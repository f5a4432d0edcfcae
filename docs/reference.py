"""The generated parts of docs/commands.md, docs/jobs.md and docs/sandbox.md, run by cog.

The flag tables come from the argparse parser (`pipeline.cli.parser.build_parser()`), whose run
flags come from RunSettings' fields, as does the job file's key table; the sandbox's switch table
comes from `pipeline.sandbox.config.SandboxConfig`'s fields, so the docs say what the code does.
Regenerate after changing a flag, a run option or a switch:

    .venv/bin/cog -r docs/commands.md docs/jobs.md docs/sandbox.md

tests/test_docs.py fails while the pages differ from what this module writes.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterator

from pipeline.cli.parser import build_parser
from pipeline.orchestrator.options import RunOption
from pipeline.orchestrator.settings import run_options
from pipeline.sandbox.config import switch_fields

_GROUP_NAMES = {"positional arguments": "arguments", "options": "other flags"}


def subcommands() -> dict[str, argparse.ArgumentParser]:
    """Each `mateo-bulk COMMAND`'s parser, by name, in the order `--help` lists them."""
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise LookupError("mateo-bulk's parser has no subcommands")


def _cell(text: str) -> str:
    """Text as a Markdown table cell: `|` would end the cell, `<...>` would read as HTML."""
    return text.replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


def _flag(action: argparse.Action) -> str:
    """`--rate RPS`, `--transport {aiohttp,httpx}`, `--wait`, `--no-wait`, or `INPUT`."""
    if not action.option_strings:
        return _cell(f"`{action.metavar or action.dest}`")
    if action.nargs == 0:
        return ", ".join(f"`{option}`" for option in action.option_strings)
    if action.metavar:
        argument = str(action.metavar)
    elif action.choices:
        argument = "{" + ",".join(str(choice) for choice in action.choices) + "}"
    else:
        argument = action.dest.upper()
    return _cell(", ".join(f"`{option} {argument}`" for option in action.option_strings))


def _help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if not action.help:
        return "the command's argument, described above" if not action.option_strings else ""
    text = parser._get_formatter()._expand_help(action)
    notes = []
    if action.required and action.option_strings and "required" not in text:
        notes.append("required")
    if isinstance(action, argparse._AppendAction) and "repeatable" not in text:
        notes.append("repeatable")
    if notes:
        text = f"{text} ({'; '.join(notes)})" if text else "; ".join(notes)
    return _cell(text)


def _groups(parser: argparse.ArgumentParser) -> Iterator[tuple[str, list[argparse.Action]]]:
    """The parser's argument groups as `--help` shows them, the ungrouped flags last."""
    ungrouped = [group for group in parser._action_groups if group.title == "options"]
    grouped = [group for group in parser._action_groups if group.title != "options"]
    for group in grouped + ungrouped:
        actions = [
            action
            for action in group._group_actions
            if action.help is not argparse.SUPPRESS and "--help" not in action.option_strings
        ]
        if actions:
            yield _GROUP_NAMES.get(str(group.title), str(group.title)), actions


def command_table(name: str) -> str:
    """Every argument and flag of `mateo-bulk NAME`, a table per group of its `--help`."""
    parser = subcommands()[name]
    lines = []
    for title, actions in _groups(parser):
        lines += ["", f"*{title}*", "", "| flag | meaning |", "|---|---|"]
        lines += [f"| {_flag(action)} | {_help(parser, action)} |" for action in actions]
    return "\n".join(lines) + "\n"


def command_flag_list(name: str) -> str:
    """Every flag of `mateo-bulk NAME` on one line per group, without the help text."""
    lines = []
    for title, actions in _groups(subcommands()[name]):
        lines.append(f"- *{title}*: " + ", ".join(_flag(action) for action in actions))
    return "\n" + "\n".join(lines) + "\n"


def command_summary() -> str:
    """One line per command: its name and the help line `mateo-bulk --help` shows."""
    lines = ["| command | what it does |", "|---|---|"]
    for name, parser in subcommands().items():
        positionals = " ".join(
            str(action.metavar or action.dest)
            for action in parser._actions
            if not action.option_strings
        )
        usage = f"mateo-bulk {name} {positionals}".rstrip()
        lines.append(f"| [`{usage}`](#mateo-bulk-{name}) | {_cell(_summary_help(name))} |")
    return "\n" + "\n".join(lines) + "\n"


def _summary_help(name: str) -> str:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                if choice.dest == name:
                    return str(choice.help)
    return ""


def _default(spec: dataclasses.Field[object]) -> str:
    if spec.metadata["default_text"]:
        return str(spec.metadata["default_text"])
    if spec.default is None:
        return "off"
    return f"`{spec.default!r}`"


def sandbox_switch_table() -> str:
    """Every flag of `mateo-bulk sandbox` by group, with the `SandboxConfig` field it sets."""
    parser = subcommands()["sandbox"]
    fields = {spec.name: spec for spec in switch_fields()}
    seen = set()
    lines = []
    for title, actions in _groups(parser):
        lines += [
            "",
            f"*{title}*",
            "",
            "| flag | `SandboxConfig` field (default) | what it does |",
            "|---|---|---|",
        ]
        for action in actions:
            spec = fields.get(action.dest)
            if spec is None:
                field = "—"
            else:
                seen.add(spec.name)
                field = f"`{spec.name}` ({_default(spec)})"
            help_text = spec.metadata["flag_help"] or spec.metadata["help"] if spec else None
            lines.append(
                f"| {_flag(action)} | {_cell(field)} "
                f"| {_cell(str(help_text)) if help_text else _help(parser, action)} |"
            )
    missing = sorted(set(fields) - seen)
    if missing:
        raise LookupError(f"SandboxConfig fields without a flag: {missing}")
    return "\n".join(lines) + "\n"


def option_row(option: RunOption) -> str:
    """A run option's row of docs/jobs.md: its job key, its flag and what it does."""
    return f"| `{option.job_key}` | `{option.flag}` | {_cell(option.help)} |"


def job_option_table() -> str:
    """Every run option: where a job file gives it and the flag that overrides it."""
    lines = ["| job file key | flag | what it does |", "|---|---|---|"]
    tables = ("source", "limits", "safety", "output", "api")  # the file's order
    options = sorted(run_options(), key=lambda option: tables.index(option.table))
    lines += [option_row(option) for option in options]
    return "\n" + "\n".join(lines) + "\n"
