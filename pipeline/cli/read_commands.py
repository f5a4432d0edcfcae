"""The commands that only read the API: doctor, export and verify."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pipeline.api.client import BASE_URL_VARIABLE, DEFAULT_BASE_URL
from pipeline.cli.session import bundled_sandbox, read_token
from pipeline.core.errors import RunStopped
from pipeline.stages.validate import parse_fixed_values


def doctor_command(args: argparse.Namespace) -> int:
    import functools
    import json

    import anyio

    from pipeline.commands.doctor.diagnosis import diagnose
    from pipeline.commands.doctor.report import report_text

    if args.sandbox:
        from pipeline.sandbox import mateo_limits_sandbox

        with mateo_limits_sandbox() as sandbox:
            print(f"mateo-bulk: sandbox serving {sandbox.base_url}", file=sys.stderr)
            # The sandbox's answers are not any account's: nothing is stored.
            check = functools.partial(diagnose, sandbox.base_url, sandbox.token, save=False)
            report = anyio.run(check)
    else:
        base_url = args.base_url or os.environ.get(BASE_URL_VARIABLE) or DEFAULT_BASE_URL
        report = anyio.run(functools.partial(diagnose, base_url, read_token(args)))
    print(json.dumps(report.to_dict(), indent=2) if args.json else report_text(report))
    if report.stopped:
        print(f"mateo-bulk: doctor stopped early: {report.stopped}", file=sys.stderr)
    return report.exit_code


@contextmanager
def _read_settings(args: argparse.Namespace) -> Iterator[Any]:
    """The ReadSettings of export and verify: pointed at a bundled sandbox with --sandbox."""
    from pipeline.commands.read_settings import ReadSettings

    settings = ReadSettings(
        token="" if args.sandbox else read_token(args),
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
    with bundled_sandbox(args.quiet) as (base_url, token):
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


def export_command(args: argparse.Namespace) -> int:
    from pipeline.commands.export import check_query, export_rows, parse_where
    from pipeline.commands.table_output import check_output_path

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


def verify_command(args: argparse.Namespace) -> int:
    from pipeline.commands.verify import VerifyState, verify_rows

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
