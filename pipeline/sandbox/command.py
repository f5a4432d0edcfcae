"""`mateo-bulk sandbox`: serve the simulator on a port, every switch a flag.

The flags are built from `SandboxConfig`'s fields, so each switch has exactly one flag and one
help text.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
from pathlib import Path
from typing import Any

from pipeline.core.errors import InputError
from pipeline.sandbox.config import SandboxConfig, switch_fields
from pipeline.sandbox.data import (
    SAMPLE_SEED,
    default_seed_candidates,
    find_default_seed,
    generate_dataset,
    load_seed,
)
from pipeline.sandbox.server import serve
from pipeline.sandbox.state import SandboxState

TOKEN_ENVIRONMENT_VARIABLE = "MATEO_SANDBOX_TOKEN"

_GROUP_TITLES = {
    "server": "server",
    "unknowns": "the real API's unknowns (one switch each)",
    "limits": "limits",
    "cutoff": "the request cut-off",
    "faults": "faults (off by default; drawn from a seeded random sequence)",
}


def flag_for(spec: dataclasses.Field[Any]) -> str:
    """The CLI flag of a switch: `--name-with-dashes`, `--no-...` for switches on by default."""
    if spec.metadata["flag"]:
        return str(spec.metadata["flag"])
    name = spec.name.replace("_", "-")
    if spec.metadata["kind"] is bool and spec.default is True:
        return f"--no-{name}"
    return f"--{name}"


def _number(kind: type, flag: str) -> Any:
    def parse(text: str) -> Any:
        try:
            return kind(text)
        except ValueError:
            noun = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"{flag} needs {noun}, not {text!r}") from None

    return parse


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Serve a local simulator of Mateo's conversation API (PostgREST behind a proxy) at "
        "http://HOST:PORT/api/v1, with switches for what is not known about the real API, "
        "rate limits, faults, and introspection under /_sandbox/ (rows, stats, config)."
    )
    server = parser.add_argument_group(_GROUP_TITLES["server"])
    server.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    server.add_argument(
        "--port",
        type=_number(int, "--port"),
        default=8080,
        help="port to listen on (default: %(default)s)",
    )
    data = server.add_mutually_exclusive_group()
    data.add_argument(
        "--seed",
        metavar="FILE",
        type=Path,
        help="CSV of conversations to serve (default: "
        "sample_data/conversations.csv; inboxes.csv and agents.csv next to it "
        "name the valid foreign keys)",
    )
    data.add_argument(
        "--generate",
        metavar="N",
        type=_number(int, "--generate"),
        help="serve N generated conversations instead of a CSV",
    )
    server.add_argument(
        "--data-seed",
        metavar="N",
        type=_number(int, "--data-seed"),
        default=SAMPLE_SEED,
        help="seed of --generate (default: %(default)s)",
    )
    server.add_argument(
        "--request-log",
        metavar="FILE",
        type=Path,
        help="append one JSON line per API request to FILE (never the token)",
    )
    groups = {
        name: parser.add_argument_group(title)
        for name, title in _GROUP_TITLES.items()
        if name != "server"
    }
    groups["server"] = server
    for spec in switch_fields():
        flag = flag_for(spec)
        meta = spec.metadata
        group = groups[meta["group"]]
        help_text = meta["flag_help"] or meta["help"]
        if spec.name == "token":
            group.add_argument(
                flag,
                dest=spec.name,
                metavar="TOKEN",
                default=None,
                help=f"{help_text} (default: ${TOKEN_ENVIRONMENT_VARIABLE}, else {spec.default!r})",
            )
        elif meta["kind"] is bool:
            action = "store_false" if spec.default else "store_true"
            group.add_argument(
                flag, dest=spec.name, action=action, default=spec.default, help=help_text
            )
        elif meta["choices"]:
            group.add_argument(
                flag,
                dest=spec.name,
                choices=meta["choices"],
                default=spec.default,
                help=f"{help_text} (default: %(default)s)",
            )
        else:
            default_text = meta["default_text"] or (
                "off" if spec.default is None else "%(default)s"
            )
            group.add_argument(
                flag,
                dest=spec.name,
                type=_number(meta["kind"], flag),
                metavar=meta["metavar"],
                default=spec.default,
                help=f"{help_text} (default: {default_text})",
            )


def config_from_args(args: argparse.Namespace) -> SandboxConfig:
    values = {spec.name: getattr(args, spec.name) for spec in switch_fields()}
    if values["token"] is None:
        values["token"] = os.environ.get(TOKEN_ENVIRONMENT_VARIABLE) or SandboxConfig().token
    try:
        return SandboxConfig(**values)
    except ValueError as error:
        raise InputError(f"bad sandbox setting: {error}") from None


def _state_from_args(args: argparse.Namespace) -> tuple[SandboxState, str]:
    if args.generate is not None:
        if args.generate < 0:
            raise InputError("--generate needs a number of rows, 0 or more")
        dataset = generate_dataset(args.generate, args.data_seed)
        source = f"{args.generate} generated conversations"
    else:
        path = args.seed or find_default_seed()
        if path is None:
            looked = ", ".join(str(candidate) for candidate in default_seed_candidates())
            raise InputError(
                f"the default seed file sample_data/conversations.csv was not "
                f"found (looked in {looked}); pass --seed FILE or --generate N"
            )
        dataset = load_seed(path)
        source = f"{len(dataset.rows)} conversations from {path}"
    return SandboxState(dataset), source


def run_command(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    if not (0 < args.port < 65536):
        raise InputError(f"--port must be between 1 and 65535, not {args.port}")
    state, source = _state_from_args(args)
    if args.request_log is not None:
        try:
            state.open_request_log(args.request_log, redact=config.token)
        except OSError as error:
            raise InputError(
                f"cannot write the request log {args.request_log}: {error.strerror}"
            ) from None
    token_note = (
        f"token {config.token!r}" if config.token == SandboxConfig().token else "the token you gave"
    )
    print(
        f"mateo-bulk sandbox: serving {source} at http://{args.host}:{args.port}/api/v1 "
        f"({token_note}); stats at http://{args.host}:{args.port}/_sandbox/stats; "
        "Ctrl+C stops",
        file=sys.stderr,
        flush=True,
    )
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        serve(config, state, args.host, args.port)
    except (KeyboardInterrupt, _Stopped):
        # uvicorn shuts down gracefully, then re-raises the signal: for a server, Ctrl+C or
        # SIGTERM is the normal way to stop.
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
    print("mateo-bulk sandbox: stopped", file=sys.stderr)
    return 0


class _Stopped(Exception):
    pass


def _stop_on_sigterm(signum: int, frame: object) -> None:
    raise _Stopped
