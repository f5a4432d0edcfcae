"""The `mateo-bulk` command: parses flags, calls the library, maps errors to exit codes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pipeline import __version__
from pipeline.errors import MateoBulkError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mateo-bulk",
        description="Change thousands of Mateo conversations at once, safely.",
    )
    parser.add_argument("--version", action="version", version=f"mateo-bulk {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    from pipeline.sandbox import command as sandbox_command

    sandbox_parser = commands.add_parser(
        "sandbox", help="serve a local simulator of Mateo's conversation API"
    )
    sandbox_command.configure_parser(sandbox_parser)
    sandbox_parser.set_defaults(handler=sandbox_command.run_command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except MateoBulkError as error:
        print(f"mateo-bulk: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("mateo-bulk: interrupted", file=sys.stderr)
        return 3
