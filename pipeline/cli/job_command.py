"""`mateo-bulk job FILE`: a job file, the flags given over it, and the job's run and report."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Any

from pipeline.api.client import BASE_URL_VARIABLE, DEFAULT_BASE_URL
from pipeline.cli.output import (
    check_metrics_file,
    command_duration,
    print_summary,
    write_error_metrics,
    write_figures,
)
from pipeline.cli.session import (
    NOT_GIVEN,
    as_a_command,
    confirmation,
    may_ask,
    progress_display,
    read_token,
    sandbox_for,
)
from pipeline.core.errors import MateoBulkError, RunStopped, SafetyError


def job_command(args: argparse.Namespace) -> int:
    from pipeline.commands.events import JsonEvents
    from pipeline.commands.job_file import load_job
    from pipeline.commands.jobs import job_options

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
        write_error_metrics(args, error.exit_code)
        return error.exit_code


def job_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The flags given to `job`, by option name, as `resolve_job` takes them."""
    flags = {
        name: value
        for name, value in vars(args).items()
        if value is not NOT_GIVEN and not (name in ("map", "set") and value is None)
    }
    if "rate" in flags and flags["rate"] is None:
        flags["rate"] = "unlimited"  # --rate unlimited; to resolve_job, None means "not given"
    return flags


def _run_job(args: argparse.Namespace, spec: Any, flags: dict[str, Any], events: Any | None) -> int:
    from pipeline.cli.progress import summary_text
    from pipeline.commands import jobs
    from pipeline.commands.metrics import RunFigures
    from pipeline.commands.notify import notify_job, notify_stopped, ordered

    options = jobs.job_options(spec, flags)
    base_url = os.environ.get(BASE_URL_VARIABLE) or DEFAULT_BASE_URL
    notifier = jobs.job_notifier(spec, flags.get("notify_url"))
    check_metrics_file(options["metrics_file"])
    if args.check:
        job = jobs.resolve_job(spec, flags, default_base_url=base_url)
        jobs.check_job(job)
        print(jobs.describe_job(job))
        if notifier is not None:
            print(f"  notify: {notifier.host} on {', '.join(ordered(notifier.on))}")
        print(f"{spec.path}: ok")
        return 0

    def run_notified(job: jobs.ResolvedJob, **hooks: Any) -> jobs.JobSummary:
        try:
            return jobs.run_job(job, **hooks, **as_a_command())
        except (RunStopped, SafetyError) as error:
            # A stop before the run could sum up (in the query's GETs) is worth an alert too.
            notify_stopped(
                notifier,
                error,
                command=f"job {spec.name}",
                token=job.settings.token,
                json_log=events is not None,
            )
            raise

    def run_resolved(job: jobs.ResolvedJob) -> jobs.JobSummary:
        if events is not None:
            events.start(
                command="job",
                job=spec.name,
                description=spec.description,
                source="query" if job.query else "file",
                dry_run=job.settings.dry_run,
                run_dir=job.settings.run_dir,
            )
            return run_notified(
                job,
                on_progress=None if options["quiet"] else events,
                on_selected=events.selected,
                confirm=confirmation(job.settings) if may_ask(args) else None,
            )
        with progress_display(options["quiet"]) as display:
            confirm = confirmation(job.settings, display) if may_ask(args) else None
            return run_notified(
                job, on_progress=display, on_selected=_print_selected, confirm=confirm
            )

    if options["sandbox"]:
        job = jobs.resolve_job(spec, flags, default_base_url=base_url)
        # A query job reads its rows even on a dry run, so the sandbox starts for one too.
        sandbox = argparse.Namespace(sandbox=True)
        with sandbox_for(sandbox, job.settings, quiet=events is not None) as settings:
            if events is not None:
                events.emit("sandbox", base_url=settings.base_url)
            summary = run_resolved(dataclasses.replace(job, settings=settings))
    else:
        token = read_token(argparse.Namespace(token_file=options["token_file"]))
        summary = run_resolved(
            jobs.resolve_job(spec, flags, token=token, default_base_url=base_url)
        )
    if summary.run is None:
        print(
            f"the query selected no conversations: nothing to change "
            f"({summary.selected.requests if summary.selected else 0} requests)\n"
            f"report: {summary.report_path}\nrun directory: {summary.run_dir}"
        )
    elif events is not None:
        print(summary_text(summary.run))
    else:
        print_summary(summary.run)
    share = summary.resolved.max_failed_share
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
    write_figures(args, RunFigures.of_job(summary, duration=command_duration(args)))
    notify_job(
        notifier,
        summary,
        token=summary.resolved.settings.token,
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
