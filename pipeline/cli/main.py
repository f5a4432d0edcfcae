"""The `mateo-bulk` command: parses flags, calls the library, maps errors to exit codes."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence

from pipeline.cli.output import write_error_metrics
from pipeline.cli.parser import build_parser
from pipeline.core.errors import MateoBulkError, RunStopped


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
            write_error_metrics(args, error.exit_code)
            return error.exit_code
        print(f"mateo-bulk: {error}", file=sys.stderr)
        if isinstance(error, RunStopped) and getattr(args, "run_dir", None):
            print(f"mateo-bulk: to continue: mateo-bulk resume {args.run_dir}", file=sys.stderr)
        write_error_metrics(args, error.exit_code)
        return error.exit_code
    except KeyboardInterrupt:
        print("mateo-bulk: interrupted", file=sys.stderr)
        write_error_metrics(args, 3)
        return 3
    except BrokenPipeError:
        # The reader went away (`status RUN | head`): not an error of ours. Python would
        # complain again flushing stdout at exit, so point it at /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
