"""Running a job file: resolve_job(spec, flags) layers the command line over a JobSpec (a flag
beats the file, the file beats the default) into RunSettings. run_job(job) runs it: a file
source as `mateo-bulk run` would, a query source by first reading the ids its filters select
(query_source), which then also guard every PATCH. Reading the file is pipeline.commands.job_file.

from pipeline.commands.job_file import load_job
from pipeline.commands.jobs import resolve_job, run_job
job = resolve_job(load_job("jobs/close-stale.toml"), token=token)
summary = run_job(job)
print(summary.exit_code, summary.report_path)
"""

from __future__ import annotations

import dataclasses
import functools
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Unpack

import anyio
import httpx

from pipeline.api.client import DEFAULT_BASE_URL
from pipeline.api.quota import QuotaExhausted
from pipeline.api.wire import check_base_url
from pipeline.commands.job_file import JOB_DEFAULTS, OPTION_NAMES, FileSource, JobSpec, QuerySource
from pipeline.commands.notify import CONDITIONS, Notifier
from pipeline.commands.notify import notifier_from_flag as _notifier_from_flag
from pipeline.commands.notify import resolve_url as _resolve_url
from pipeline.commands.query_source import ResolvedQuery, SelectedIds, select_ids
from pipeline.commands.query_source import resolve_query as _resolve_query
from pipeline.core.errors import InputError
from pipeline.core.models import Outcome
from pipeline.core.run_dir import RunDir, default_run_dir
from pipeline.orchestrator.event_loop import refuse_running_loop
from pipeline.orchestrator.hooks import SessionHooks
from pipeline.orchestrator.options import Invalid
from pipeline.orchestrator.runner import run_async
from pipeline.orchestrator.settings import RunSettings, check_placeholders, run_options
from pipeline.orchestrator.summary import Confirm, ProgressCallback, RunSummary
from pipeline.stages.input.opening import open_input
from pipeline.stages.report import write_report
from pipeline.stages.session_files import report_path
from pipeline.stages.validate import parse_fixed_values

#: Outcomes that count against `max_failed_share`. `conflict` does not: the guard did its job.
FAILED_OUTCOMES = (Outcome.FAILED, Outcome.REJECTED, Outcome.INVALID, Outcome.NOT_FOUND)


# --- The command line over the file -------------------------------------------------------------


def job_notifier(spec: JobSpec, url: str | None = None) -> Notifier | None:
    """Where and when the job's end is announced: `[notify]`, its URL read now.

    `url` (`--notify-url`) replaces the file's URL and keeps its `on`. A file:PATH is relative
    to the job file. InputError, naming the file, line and key, if the URL cannot be had.
    """
    on = spec.notify.on if spec.notify is not None else frozenset(CONDITIONS)
    if url is not None:
        return _notifier_from_flag(url, on=on)
    if spec.notify is None:
        return None
    if spec.notify.url is None:
        raise spec.error(
            ("notify",), 'has no url; add url = "env:NAME" (or file:PATH) or give --notify-url'
        )
    try:
        return Notifier(_resolve_url(spec.notify.url, relative_to=spec.path.parent), on)
    except ValueError as error:
        raise spec.error(("notify", "url"), str(error)) from None


def job_options(spec: JobSpec, flags: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every option's value: the flag if given, else the file's, else the default.

    `flags` holds the flags given on the command line (or by a Python caller), by option name.
    None means "not given", never "unlimited": `resolve_job(spec, {"rate": None})` keeps the job
    file's reviewed rate. An unlimited rate is spelt as in the file: "unlimited".
    """
    given = {
        name: value
        for name, value in (flags or {}).items()
        if name in OPTION_NAMES and value is not None
    }
    if given.get("rate") == "unlimited":
        given["rate"] = None
    return {**JOB_DEFAULTS, **spec.options, **given}


def expand_path(template: str, job: str, now: datetime) -> Path:
    """A `report` or `run_dir` value with {job}, {date} and {timestamp} filled in (UTC)."""
    try:
        check_placeholders(template)
    except Invalid as error:
        raise InputError(str(error)) from None
    return Path(
        template.format(
            job=job,
            date=now.strftime("%Y-%m-%d"),
            timestamp=now.strftime("%Y%m%dT%H%M%SZ"),
        )
    )


@dataclass(frozen=True)
class ResolvedJob:
    """A job ready to run: its spec, the merged options and the run's settings."""

    spec: JobSpec
    settings: RunSettings
    options: Mapping[str, Any]
    #: The query with its dates resolved (None for a file source).
    query: ResolvedQuery | None
    max_failed_share: float | None


def resolve_job(
    spec: JobSpec,
    flags: Mapping[str, Any] | None = None,
    *,
    token: str = "",
    default_base_url: str = DEFAULT_BASE_URL,
    now: datetime | None = None,
) -> ResolvedJob:
    """Merge flags over the file into RunSettings; resolve the query's dates (once, here).

    `flags` may also hold "map" and "set": lists of FIELD=VALUE, merged field by field over
    the file's [source.map] and [set].
    """
    flags = dict(flags or {})
    options = job_options(spec, flags)
    now = (now or datetime.now(UTC)).astimezone(UTC)
    column_map = dict(spec.column_map)
    for assignment in flags.get("map") or ():
        name, _, column = assignment.partition("=")
        column_map[name.strip()] = column.strip()
    fixed_values = {**spec.fixed_values, **parse_fixed_values(flags.get("set") or ())}
    run_dir = (
        expand_path(str(options["run_dir"]), spec.name, now)
        if options.get("run_dir")
        else default_run_dir(spec.path)
    )
    report = expand_path(str(options["report"]), spec.name, now) if options.get("report") else None
    query = None
    if isinstance(spec.source, QuerySource):
        query = _resolve_query(spec.source.filters, now)
        input_path = RunDir(run_dir).query_ids
    else:
        input_path = spec.source.path
    settings = RunSettings(
        input=input_path,
        token=token,
        base_url=options.get("base_url") or default_base_url,
        column_map=column_map,
        fixed_values=fixed_values,
        run_dir=run_dir,
        report=report,
        query_guard=dict(query.resolved) if query else {},
        **{
            option.name: options[option.name]
            for option in run_options()
            if option.name not in ("base_url", "run_dir", "report")
        },
    )
    return ResolvedJob(spec, settings, options, query, spec.max_failed_share)


def check_job(job: ResolvedJob) -> None:
    """Everything that can be checked without the network (`mateo-bulk job FILE --check`).

    The file was parsed and typed by load_job; here the settings are checked as a run would,
    and a file source is opened: it must exist, and its header must hold the columns.
    """
    spec, settings = job.spec, job.settings
    dataclasses.replace(settings, dry_run=True).check()
    if job.options.get("base_url"):
        check_base_url(settings.base_url)
    if isinstance(spec.source, FileSource):
        keys = ("source", "map") if spec.column_map else ("source", "file")
        try:
            with open_input(
                settings.input,
                column_map=settings.column_map,
                delimiter=settings.delimiter,
                sheet=settings.sheet,
            ):
                pass
        except InputError as error:
            raise spec.error(keys, str(error)) from None


# --- Running ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class JobSummary:
    """What a job did: the run's summary, and for a query source what the query selected."""

    resolved: ResolvedJob
    #: None when the query selected nothing: then nothing was sent but the query's GETs.
    run: RunSummary | None
    selected: SelectedIds | None = None
    empty_report: Path | None = None

    @property
    def report_path(self) -> Path | None:
        return self.run.report_path if self.run else self.empty_report

    @property
    def run_dir(self) -> Path:
        assert self.resolved.settings.run_dir is not None
        return self.run.run_dir if self.run else self.resolved.settings.run_dir

    @property
    def total_rows(self) -> int:
        return self.run.total_rows if self.run else 0

    @property
    def failed_rows(self) -> int:
        """Rows that ended failed, rejected, invalid or not_found, and updated rows that came
        back with other values than their target."""
        if self.run is None:
            return 0
        counts = self.run.counts
        return sum(counts.get(outcome, 0) for outcome in FAILED_OUTCOMES) + self.run.differences

    @property
    def failed_share(self) -> float:
        return self.failed_rows / self.total_rows if self.total_rows else 0.0

    @property
    def exit_code(self) -> int:
        """As `run`'s (0 all updated, 1 some not, 3 stopped, 4 safety stop), except:

        a query that selected nothing is 0; with max_failed_share, a finished run is 0 when
        its failed share is at most that, else 1 (conflicts never count: the guard worked).
        """
        if self.run is None:
            return 0
        if self.run.stopped is not None or self.resolved.max_failed_share is None:
            return self.run.exit_code
        return 1 if self.failed_share > self.resolved.max_failed_share else 0


def run_job(
    job: ResolvedJob,
    *,
    on_progress: ProgressCallback | None = None,
    on_selected: Callable[[SelectedIds], None] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    confirm: Confirm | None = None,
    **session: Unpack[SessionHooks],
) -> JobSummary:
    """Run a resolved job to its end (or a stop); InputError before anything is sent.

    `session` is that of `pipeline.run` (`SessionHooks`): the CLI sets both.
    """
    refuse_running_loop("run_job")
    return anyio.run(
        functools.partial(
            run_job_async,
            job,
            on_progress=on_progress,
            on_selected=on_selected,
            transport=transport,
            confirm=confirm,
            **session,
        )
    )


async def run_job_async(
    job: ResolvedJob,
    *,
    on_progress: ProgressCallback | None = None,
    on_selected: Callable[[SelectedIds], None] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    confirm: Confirm | None = None,
    **session: Unpack[SessionHooks],
) -> JobSummary:
    """The same as `run_job`, inside a running event loop."""
    settings = job.settings
    start_run = functools.partial(
        run_async,
        on_progress=on_progress,
        transport=transport,
        confirm=confirm,
        **session,
    )
    if job.query is None:
        summary = await start_run(settings)
        return JobSummary(job, summary)
    settings.check()
    if not settings.token:
        raise InputError(
            "a query job reads its conversations from the API, even on a dry run: set "
            "MATEO_API_TOKEN or --token-file (or use --sandbox)"
        )
    check_base_url(settings.base_url)
    run_dir = settings.run_dir
    assert run_dir is not None
    if RunDir(run_dir).journal.exists() or RunDir(run_dir).query_ids.exists():
        raise InputError(
            f"{run_dir} already holds a run: continue it with `mateo-bulk resume {run_dir}` "
            "or choose another run_dir (a {timestamp} placeholder keeps them apart)"
        )
    made_run_dir = not run_dir.exists()
    selected = await select_ids(job.query, settings, run_dir, transport=transport)
    if on_selected is not None:
        on_selected(selected)
    try:
        _check_selection(settings, selected)
        if selected.rows == 0:
            # The reader refuses a file without rows; an empty selection is the normal answer
            # of a job run again, so it ends here: an empty report, nothing sent but the GETs.
            report = report_path(run_dir, settings.report)
            await anyio.to_thread.run_sync(write_report, [], report)
            return JobSummary(job, None, selected, report)
        if settings.max_requests is not None:
            # The GETs count toward the job's own request limit, as they do toward the day's.
            left = settings.max_requests - selected.requests
            if left < 1:
                raise QuotaExhausted(
                    f"the query's {selected.requests} GETs used all of max_requests "
                    f"{settings.max_requests}; raise it and start the job again"
                )
            settings = dataclasses.replace(settings, max_requests=left)
        summary = await start_run(settings)
    except InputError:
        # Nothing was changed; a run directory holding only the ids would block the next run.
        if made_run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    # The job's cost is the query's GETs and the run's requests: both count against the day.
    summary = dataclasses.replace(
        summary,
        requests=summary.requests + selected.requests,
        retries=summary.retries + selected.retries,
    )
    return JobSummary(job, summary, selected)


def _check_selection(settings: RunSettings, selected: SelectedIds) -> None:
    """Refuse a selection of other than `expect_rows` rows, or of more than `max_changes`."""
    gets = f"{selected.requests:,} GET{'s' if selected.requests != 1 else ''}"
    spent = f"nothing was changed; only the query's {gets} went out"
    if settings.expect_rows is not None and selected.rows != settings.expect_rows:
        raise InputError(
            f"the query selected {selected.rows:,} conversations, not the "
            f"{settings.expect_rows:,} of expect_rows; {spent}"
        )
    if settings.max_changes is not None and selected.rows > settings.max_changes:
        raise InputError(
            f"the query selected {selected.rows:,} conversations, more than max_changes "
            f"{settings.max_changes:,}; {spent}"
        )


def describe_job(job: ResolvedJob) -> str:
    """A few lines saying what the job will do (`--check` prints them)."""
    spec, settings = job.spec, job.settings
    lines = [f"job {spec.name}: {spec.description or '(no description)'}"]
    if job.query is not None:
        filters = ", ".join(f"{column}={value}" for column, value in job.query.resolved.items())
        lines.append(f"  source: query {filters} (also the guard of every PATCH)")
    else:
        lines.append(f"  source: file {settings.input}")
    values = ", ".join(
        f"{name}={'null' if value is None else value}"
        for name, value in settings.fixed_values.items()
    )
    lines.append(f"  set: {values or '(the values in the file)'}")
    rate = "unlimited" if settings.rate is None else f"{settings.rate:g}/s"
    lines.append(
        f"  limits: rate {rate}, concurrency {settings.concurrency}, batch size "
        f"{settings.batch_size}, daily quota {settings.daily_quota:,}"
        + (f", at most {settings.max_requests:,} requests" if settings.max_requests else "")
    )
    guards = []
    if settings.max_changes is not None:
        guards.append(f"at most {settings.max_changes:,} rows to change")
    if settings.expect_rows is not None:
        guards.append(f"exactly {settings.expect_rows:,} rows")
    if guards:
        lines.append(f"  row guards: {', '.join(guards)}")
    if job.max_failed_share is not None:
        lines.append(f"  max_failed_share: {job.max_failed_share:g}")
    return "\n".join(lines)
