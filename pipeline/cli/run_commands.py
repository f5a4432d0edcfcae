"""The commands of one run: run, plan, apply, resume, and status and report of a run."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import os

from pipeline.api.client import BASE_URL_VARIABLE, DEFAULT_BASE_URL
from pipeline.cli.output import (
    check_metrics_file,
    print_stop,
    print_summary,
    write_run_metrics,
)
from pipeline.cli.session import (
    NOT_GIVEN,
    as_a_command,
    bundled_sandbox,
    confirmation,
    may_ask,
    progress_display,
    read_token,
    sandbox_for,
    stdin_for,
)
from pipeline.orchestrator.runner import resume, run
from pipeline.orchestrator.settings import RunSettings, run_options
from pipeline.orchestrator.status import export_report, run_status
from pipeline.orchestrator.summary import RunSummary
from pipeline.stages.validate import parse_fixed_values


def settings_from_args(args: argparse.Namespace) -> RunSettings:
    column_map = {}
    for assignment in args.map:
        field, _, column = assignment.partition("=")
        column_map[field.strip()] = column.strip()
    return RunSettings(
        input=args.input,
        # A dry run needs no token; with one, it can show the day's budget.
        token="" if args.sandbox else read_token(args),
        base_url=args.base_url or os.environ.get(BASE_URL_VARIABLE) or DEFAULT_BASE_URL,
        column_map=column_map,
        fixed_values=parse_fixed_values(args.set),
        **{
            option.name: getattr(args, option.name)
            for option in run_options()
            if option.name != "base_url"
        },
    )


def run_command(args: argparse.Namespace) -> int:
    from pipeline.commands.notify import notifier_from_flag, notify_run

    notifier = notifier_from_flag(args.notify_url)  # a bad URL: exit 2 before any request
    check_metrics_file(args.metrics_file)
    settings = settings_from_args(args)
    if args.dry_run:
        args.sandbox = False  # a dry run sends nothing: no sandbox needed
    with sandbox_for(args, settings, quiet=args.log_format == "json") as settings:
        summary = _run_with_display(settings, args.quiet, args.log_format, ask=may_ask(args))
    if args.log_format == "json":
        from pipeline.cli.progress import summary_text

        print(summary_text(summary))
    else:
        print_summary(summary, sandbox=args.sandbox)
    write_run_metrics(args, summary)
    notify_run(
        notifier,
        summary,
        command=f"run {args.input}",
        token=settings.token,
        json_log=args.log_format == "json",
        sandbox=args.sandbox,
    )
    return summary.exit_code


def plan_command(args: argparse.Namespace) -> int:
    from pipeline.cli.progress import plan_summary_text

    settings = dataclasses.replace(settings_from_args(args), plan_only=True)
    with sandbox_for(args, settings) as settings:
        summary = _run_with_display(settings, args.quiet, args.log_format)
    print(plan_summary_text(summary))
    print_stop(summary)
    return summary.exit_code


def apply_command(args: argparse.Namespace) -> int:
    from pipeline.orchestrator.runner import apply_plan

    settings = settings_from_args(args)
    with sandbox_for(args, settings) as settings:
        with progress_display(args.quiet) as display:
            # apply sends the plan's change rows as they are: no snapshot skips any of them.
            exact = dataclasses.replace(settings, snapshot=False)
            confirm = confirmation(exact, display) if may_ask(args) else None
            summary = apply_plan(
                args.input, settings, on_progress=display, confirm=confirm, **as_a_command()
            )
    print_summary(summary)
    return summary.exit_code


def _run_with_display(
    settings: RunSettings, quiet: bool, log_format: str = "text", *, ask: bool = False
) -> RunSummary:
    if log_format == "json":
        from pipeline.commands.events import JsonEvents

        events = JsonEvents()
        events.start(command="run", input=settings.input, dry_run=settings.dry_run)
        confirm = confirmation(settings) if ask else None
        summary = run(
            settings,
            on_progress=None if quiet else events,
            confirm=confirm,
            stdin=stdin_for(settings),
            **as_a_command(),
        )
        events.summary(summary)
        return summary
    with progress_display(quiet) as display:
        confirm = confirmation(settings, display) if ask else None
        return run(
            settings,
            on_progress=display,
            confirm=confirm,
            stdin=stdin_for(settings),
            **as_a_command(),
        )


def resume_command(args: argparse.Namespace) -> int:
    from pipeline.commands.notify import notifier_from_flag, notify_run
    from pipeline.orchestrator.runner import RESUME_OVERRIDES

    # Never stored with the run (the URL is a credential): each resume gives it again.
    notifier = notifier_from_flag(args.notify_url)
    check_metrics_file(args.metrics_file)
    overrides = {
        name: getattr(args, name)
        for name in RESUME_OVERRIDES
        if getattr(args, name) is not NOT_GIVEN
    }
    with contextlib.ExitStack() as stack:
        if args.sandbox:
            overrides["base_url"], token = stack.enter_context(
                bundled_sandbox(args.log_format == "json")
            )
        else:
            token = read_token(args)
        resume_with = functools.partial(
            resume,
            args.run_dir,
            token=token,
            retry_failed=args.retry_failed,
            report=args.report,
            overrides=overrides,
            **as_a_command(),
        )
        if args.log_format == "json":
            from pipeline.commands.events import JsonEvents

            events = JsonEvents()
            events.start(command="resume", run_dir=args.run_dir)
            summary = resume_with(on_progress=None if args.quiet else events)
            events.summary(summary)
        else:
            with progress_display(args.quiet) as display:
                summary = resume_with(on_progress=display)
    print_summary(summary)
    write_run_metrics(args, summary)
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


def status_command(args: argparse.Namespace) -> int:
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


def report_command(args: argparse.Namespace) -> int:
    rows = export_report(args.run_dir, args.report)
    print(f"report: {args.report} ({rows:,} rows)")
    return 0
