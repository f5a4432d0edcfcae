"""Job files: a reviewed TOML file that says what a run reads, sets, and how fast it may go.

load_job(path) reads the file with tomllib into a frozen JobSpec, refusing an unknown key or a
wrong type with the file, line and key named. plan_job(spec, flags) layers the command line
over it (a flag beats the file, the file beats the default) into RunSettings. run_job(plan)
runs it: a file source as `mateo-bulk run` would, a query source by first reading the ids its
filters select (query_source), which then also guard every PATCH.

from pipeline.commands.jobs import load_job, plan_job, run_job
plan = plan_job(load_job("jobs/close-stale.toml"), token=token)
summary = run_job(plan)
print(summary.exit_code, summary.report_path)
"""

from __future__ import annotations

import dataclasses
import functools
import re
import shutil
import string
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx

from pipeline.api.client import DEFAULT_BASE_URL, TRANSPORTS, check_base_url
from pipeline.api.quota import QuotaExhausted, parse_reset_time
from pipeline.commands.metrics import SUFFIX as METRICS_SUFFIX
from pipeline.commands.notify import CONDITIONS, Notifier, NotifySpec, check_form, check_on
from pipeline.commands.notify import notifier_from_flag as _notifier_from_flag
from pipeline.commands.notify import resolve_url as _resolve_url
from pipeline.commands.query_source import (
    ResolvedQuery,
    SelectedIds,
    check_filter,
    select_ids,
)
from pipeline.commands.query_source import resolve_query as _resolve_query
from pipeline.core.errors import InputError
from pipeline.core.models import FIELDS, Outcome
from pipeline.core.run_dir import RunDir, default_run_dir
from pipeline.orchestrator.event_loop import refuse_running_loop
from pipeline.orchestrator.execute import AnswersLookup
from pipeline.orchestrator.runner import run_async
from pipeline.orchestrator.settings import RunSettings
from pipeline.orchestrator.summary import Confirm, ProgressCallback, RunSummary
from pipeline.stages.reader import MAPPABLE_FIELDS, open_input
from pipeline.stages.report import REPORT_FORMATS, write_report
from pipeline.stages.side_files import report_path
from pipeline.stages.validate import UNSET, parse_cell, parse_fixed_values

LOG_FORMATS = ("text", "json")
#: Placeholders of `report` and `run_dir`.
PATH_PLACEHOLDERS = ("job", "date", "timestamp")
#: Outcomes that count against `max_failed_share`. `conflict` does not: the guard did its job.
FAILED_OUTCOMES = (Outcome.FAILED, Outcome.REJECTED, Outcome.INVALID, Outcome.NOT_FOUND)


class _Invalid(ValueError):
    """A value of the wrong type or range; the loader adds the file, line and key."""


# --- Value checks: each returns the value as the run wants it, or raises _Invalid ---------------


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return f"a {type(value).__name__}"


def _got(value: Any) -> str:
    return f"got {value!r} ({_kind(value)})"


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, {_got(value)}")
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"expected true or false, {_got(value)}")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(f"expected a number, {_got(value)}")
    return float(value)


def _at_least(low: float, *, integer: bool = True, high: float | None = None) -> Callable[..., Any]:
    def check(value: Any) -> Any:
        if integer and (isinstance(value, bool) or not isinstance(value, int)):
            raise _Invalid(f"expected a whole number of at least {low:g}, {_got(value)}")
        number = value if integer else _number(value)
        if number < low or (high is not None and number > high):
            span = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
            raise _Invalid(f"must be {span}, {_got(value)}")
        return number

    return check


def _positive(value: Any) -> float:
    number = _number(value)
    if not number > 0:
        raise _Invalid(f"must be above 0, {_got(value)}")
    return number


def _rate(value: Any) -> float | None:
    if value == "unlimited":
        return None
    if isinstance(value, str):
        raise _Invalid(f'expected requests per second or "unlimited", {_got(value)}')
    return _positive(value)


def _choice(choices: Sequence[str]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if _text(value) not in choices:
            raise _Invalid(f"must be one of {', '.join(choices)}, {_got(value)}")
        return str(value)

    return check


def _reset_time(value: Any) -> str:
    try:
        parse_reset_time(_text(value))
    except InputError:
        raise _Invalid(f'must be HH:MM in UTC, e.g. "00:00", {_got(value)}') from None
    return str(value)


def _delimiter(value: Any) -> str:
    if len(_text(value)) != 1:
        raise _Invalid(f'must be one character such as "," or ";", {_got(value)}')
    return str(value)


def _sheet(value: Any) -> str | int:
    """A workbook's sheet: its name, or its number counted from 1."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _Invalid(f'must be a sheet name such as "Rows" or a number from 1, {_got(value)}')
    if isinstance(value, int) and value < 1:
        raise _Invalid(f"sheets are numbered from 1, {_got(value)}")
    if isinstance(value, str) and not value.strip():
        raise _Invalid("must not be empty")
    return value


def _path_template(value: Any) -> str:
    text = _text(value)
    if not text.strip():
        raise _Invalid("must not be empty")
    _check_placeholders(text)
    return text


def _report_path(value: Any) -> str:
    text = _path_template(value)
    if Path(text).suffix.lower() not in REPORT_FORMATS:
        raise _Invalid(f"the suffix must be one of {', '.join(REPORT_FORMATS)}, {_got(value)}")
    return text


def _metrics_file(value: Any) -> str:
    text = _text(value)
    if not text.strip() or Path(text).suffix != METRICS_SUFFIX:
        raise _Invalid(
            f"must name a file ending in {METRICS_SUFFIX} (node_exporter's textfile collector "
            f"reads only those), {_got(value)}"
        )
    return text


def _base_url(value: Any) -> str:
    try:
        return check_base_url(_text(value))
    except InputError as error:
        raise _Invalid(str(error).removeprefix("--base-url ")) from None


def _check_placeholders(text: str) -> None:
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]
    except ValueError as error:
        raise _Invalid(f"{text!r}: {error}; a literal brace is written {{{{ or }}}}") from None
    for name in names:
        if name not in PATH_PLACEHOLDERS:
            shown = ", ".join(f"{{{each}}}" for each in PATH_PLACEHOLDERS)
            raise _Invalid(f"unknown placeholder {{{name}}} in {text!r}; use {shown}")


#: The keys of each table and how each is checked. Every `run` flag has one, named as the flag
#: with underscores, in the table of the flag's group in `mateo-bulk run --help` (but
#: --notify-url: `[notify] url`, read apart because its URL may come from a variable or file).
_OPTIONS: dict[str, dict[str, Callable[[Any], Any]]] = {
    "source": {"delimiter": _delimiter, "sheet": _sheet, "strict": _boolean},
    "limits": {
        "rate": _rate,
        "concurrency": _at_least(1),
        "batch_size": _at_least(1, high=100),
        "max_attempts": _at_least(1),
        "timeout": _positive,
        "transport": _choice(TRANSPORTS),
        "daily_quota": _at_least(1),
        "max_requests": _at_least(1),
        "quota_reset_utc": _reset_time,
        "max_wait": _at_least(0, integer=False),
        "wait": _boolean,
    },
    "safety": {
        "snapshot": _boolean,
        "guarded": _boolean,
        "max_changes": _at_least(0),
        "expect_rows": _at_least(0),
    },
    "output": {
        "report": _report_path,
        "run_dir": _path_template,
        "dry_run": _boolean,
        "quiet": _boolean,
        "log_format": _choice(LOG_FORMATS),
        "metrics_file": _metrics_file,
    },
    "api": {"base_url": _base_url, "token_file": _text, "sandbox": _boolean},
}
#: Every option a job file or a flag may give, by its flag's name with underscores.
OPTION_NAMES: frozenset[str] = frozenset(name for keys in _OPTIONS.values() for name in keys)
_TABLES = ("source", "set", "limits", "safety", "output", "api", "notify")
_TOP_KEYS = ("description", "max_failed_share", *_TABLES)
_SOURCE_KEYS = ("file", "map", "query", *_OPTIONS["source"])
#: `[notify] url` is the job's `--notify-url`; `on` says when to send (pipeline.commands.notify).
_NOTIFY_KEYS = ("url", "on")
#: What a job gets for an option neither its file nor a flag gives (RunSettings' defaults).
_DEFAULTS: dict[str, Any] = {
    **{
        spec.name: spec.default
        for spec in dataclasses.fields(RunSettings)
        if spec.name in OPTION_NAMES and spec.default is not dataclasses.MISSING
    },
    #: None: MATEO_BASE_URL or Mateo's URL (plan_job's default_base_url).
    "base_url": None,
    "token_file": None,
    "sandbox": False,
    "quiet": False,
    "log_format": "text",
    "metrics_file": None,
}


# --- Where a key is written ---------------------------------------------------------------------

_HEADER = re.compile(r"^\s*\[\[?\s*([^\[\]#]+?)\s*\]\]?\s*(#.*)?$")
_ASSIGNMENT = re.compile(r"^\s*([A-Za-z0-9_\-\"'. ]+?)\s*=")


def _key_path(text: str) -> tuple[str, ...]:
    return tuple(part.strip().strip("\"'") for part in text.split("."))


class _Locator:
    """Line numbers of keys, found by scanning the text (tomllib gives none).

    Each `key =` line is read under the last `[table]` header above it; good enough for the
    plain files jobs are, and a key it cannot place falls back to its table's line.
    """

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self._entries: list[tuple[int, tuple[str, ...]]] = []
        table: tuple[str, ...] = ()
        for number, line in enumerate(text.splitlines(), 1):
            if header := _HEADER.match(line):
                table = _key_path(header.group(1))
                self._entries.append((number, table))
            elif assignment := _ASSIGNMENT.match(line):
                self._entries.append((number, table + _key_path(assignment.group(1))))

    def line(self, keys: tuple[str, ...]) -> int:
        for length in range(len(keys), 0, -1):
            for number, found in self._entries:
                if found[:length] == keys[:length]:
                    return number
        return 1

    def error(self, keys: tuple[str, ...], message: str) -> InputError:
        return InputError(f"{self.path}, line {self.line(keys)}: {'.'.join(keys)}: {message}")


# --- The spec -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileSource:
    """Rows from a CSV or Parquet file; `path` is relative to the job file as written."""

    path: Path


@dataclass(frozen=True)
class QuerySource:
    """The conversations PostgREST filters select, e.g. {"status": "eq.open"}."""

    filters: Mapping[str, str]


@dataclass(frozen=True)
class JobSpec:
    """A job file, checked: what it reads, what it sets, and the options it gives."""

    path: Path
    description: str
    source: FileSource | QuerySource
    column_map: Mapping[str, str]
    #: The `[set]` values, parsed: None means JSON null.
    fixed_values: Mapping[str, str | None]
    #: The options the file gives, by flag name with underscores (see OPTION_NAMES).
    options: Mapping[str, Any]
    #: The share of rows that may end failed, rejected, invalid or not_found before the job's
    #: exit code is 1; None: exit codes as `run` gives them.
    max_failed_share: float | None = None
    locator: _Locator | None = field(default=None, repr=False, compare=False)
    #: `[notify]` as written (its URL not yet read from a variable or file); None: no table.
    notify: NotifySpec | None = None

    @property
    def name(self) -> str:
        """The job's name, for `{job}`: the file's name without .toml."""
        return self.path.stem

    def error(self, keys: tuple[str, ...], message: str) -> InputError:
        if self.locator is None:
            return InputError(f"{self.path}: {'.'.join(keys)}: {message}")
        return self.locator.error(keys, message)


def load_job(path: str | Path) -> JobSpec:
    """Read and check a job file; raise InputError naming the file, line and key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such job file; check the path") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a directory; pass a job file (.toml)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot read it ({type(error).__name__})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        message = str(error)
        found = re.search(r"\(at line (\d+), column \d+\)", message)
        line = found.group(1) if found else "?"
        reason = message[: found.start()].strip() if found else message
        raise InputError(f"{path}, line {line}: not valid TOML: {reason}") from None
    return _spec(path, data, _Locator(path, text))


def _spec(path: Path, data: dict[str, Any], locator: _Locator) -> JobSpec:
    def check(keys: tuple[str, ...], value: Any, checker: Callable[[Any], Any]) -> Any:
        try:
            return checker(value)
        except _Invalid as error:
            raise locator.error(keys, str(error)) from None

    for key, value in data.items():
        if key not in _TOP_KEYS:
            what = "table" if isinstance(value, dict) else "key"
            raise locator.error((key,), f"unknown {what}; a job file has {', '.join(_TOP_KEYS)}")
        if key in _TABLES and not isinstance(value, dict):
            raise locator.error((key,), f"must be a table, [{key}], {_got(value)}")
    options: dict[str, Any] = {}
    for table, checkers in _OPTIONS.items():
        for key, value in data.get(table, {}).items():
            if table == "source" and key in _SOURCE_KEYS and key not in checkers:
                continue
            if key not in checkers:
                known = _SOURCE_KEYS if table == "source" else tuple(checkers)
                raise locator.error((table, key), f"unknown key; [{table}] has {', '.join(known)}")
            options[key] = check((table, key), value, checkers[key])
    if "token_file" in options:
        # Relative to the job file, as the source file is.
        options["token_file"] = str(path.parent / options["token_file"])
    description = check(("description",), data.get("description", ""), _text)
    share = None
    if "max_failed_share" in data:
        share = check(
            ("max_failed_share",),
            data["max_failed_share"],
            _at_least(0, integer=False, high=1),
        )
    source, column_map = _source(data.get("source"), path, locator)
    fixed_values = _fixed_values(data.get("set", {}), locator)
    if isinstance(source, QuerySource) and not fixed_values:
        raise locator.error(("set",), "a query job needs [set] with at least one value to set")
    notify = _notify(data["notify"], locator) if "notify" in data else None
    return JobSpec(
        path, description, source, column_map, fixed_values, options, share, locator, notify
    )


def _notify(table: dict[str, Any], locator: _Locator) -> NotifySpec:
    for key in table:
        if key not in _NOTIFY_KEYS:
            raise locator.error(
                ("notify", key), f"unknown key; [notify] has {', '.join(_NOTIFY_KEYS)}"
            )
    url = table.get("url")
    if url is not None:
        if not isinstance(url, str):
            raise locator.error(
                ("notify", "url"), f'expected a URL, "env:NAME" or "file:PATH", {_got(url)}'
            )
        try:
            check_form(url)
        except ValueError as error:
            # The message names the URL's host at most: the URL is a credential.
            raise locator.error(("notify", "url"), str(error)) from None
    on = frozenset(CONDITIONS)
    if "on" in table:
        try:
            on = check_on(table["on"])
        except ValueError as error:
            raise locator.error(("notify", "on"), str(error)) from None
    return NotifySpec(url, on)


def _source(
    table: dict[str, Any] | None, path: Path, locator: _Locator
) -> tuple[FileSource | QuerySource, dict[str, str]]:
    if table is None:
        raise locator.error(
            ("source",), 'missing; add [source] with file = "rows.csv", or [source.query]'
        )
    has_file, has_query = "file" in table, "query" in table
    if has_file == has_query:
        raise locator.error(
            ("source",),
            'give either file = "rows.csv" or a [source.query] table, not '
            + ("both" if has_file else "neither"),
        )
    column_map: dict[str, str] = {}
    if has_query:
        for key in ("map", "delimiter", "sheet", "strict"):
            if key in table:
                raise locator.error(("source", key), "is for a file source, not a query")
        query = table["query"]
        if not isinstance(query, dict):
            raise locator.error(("source", "query"), f"must be a table, {_got(query)}")
        if not query:
            raise locator.error(
                ("source", "query"),
                "needs at least one filter: a query without one would select every conversation",
            )
        filters: dict[str, str] = {}
        for column, value in query.items():
            keys = ("source", "query", column)
            if not isinstance(value, str):
                raise locator.error(keys, f'expected a filter such as "eq.open", {_got(value)}')
            try:
                check_filter(column, value)
            except ValueError as error:
                raise locator.error(keys, str(error)) from None
            filters[column] = value
        return QuerySource(filters), column_map
    file = table["file"]
    if not isinstance(file, str) or not file.strip():
        raise locator.error(("source", "file"), f"expected a file path, {_got(file)}")
    mapping = table.get("map", {})
    if not isinstance(mapping, dict):
        raise locator.error(("source", "map"), f"must be a table, {_got(mapping)}")
    for name, column in mapping.items():
        keys = ("source", "map", name)
        if name not in MAPPABLE_FIELDS:
            raise locator.error(keys, f"unknown field; fields are {', '.join(MAPPABLE_FIELDS)}")
        if not isinstance(column, str) or not column.strip():
            raise locator.error(keys, f"expected a column name, {_got(column)}")
        column_map[name] = column
    # Relative to the job file, so a job runs the same from any working directory (cron).
    return FileSource(path.parent / file), column_map


def _fixed_values(table: dict[str, Any], locator: _Locator) -> dict[str, str | None]:
    values: dict[str, str | None] = {}
    for name, raw in table.items():
        keys = ("set", name)
        if name not in FIELDS:
            raise locator.error(keys, f"unknown field; fields are {', '.join(FIELDS)}")
        if not isinstance(raw, str):
            raise locator.error(keys, f'expected a string (or "null"), {_got(raw)}')
        try:
            value = parse_cell(name, raw)
        except ValueError as error:
            raise locator.error(keys, str(error)) from None
        if value is UNSET:
            raise locator.error(keys, 'empty value; give a value (or "null" for assignee_id)')
        values[name] = value  # type: ignore[assignment]  # UNSET is excluded above
    return values


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
    None means "not given", never "unlimited": `plan_job(spec, {"rate": None})` keeps the job
    file's reviewed rate. An unlimited rate is spelt as in the file: "unlimited".
    """
    given = {
        name: value
        for name, value in (flags or {}).items()
        if name in OPTION_NAMES and value is not None
    }
    if given.get("rate") == "unlimited":
        given["rate"] = None
    return {**_DEFAULTS, **spec.options, **given}


def expand_path(template: str, job: str, now: datetime) -> Path:
    """A `report` or `run_dir` value with {job}, {date} and {timestamp} filled in (UTC)."""
    try:
        _check_placeholders(template)
    except _Invalid as error:
        raise InputError(str(error)) from None
    return Path(
        template.format(
            job=job,
            date=now.strftime("%Y-%m-%d"),
            timestamp=now.strftime("%Y%m%dT%H%M%SZ"),
        )
    )


@dataclass(frozen=True)
class JobPlan:
    """A job ready to run: its spec, the merged options and the run's settings."""

    spec: JobSpec
    settings: RunSettings
    options: Mapping[str, Any]
    #: The query with its dates resolved (None for a file source).
    query: ResolvedQuery | None
    max_failed_share: float | None


def plan_job(
    spec: JobSpec,
    flags: Mapping[str, Any] | None = None,
    *,
    token: str = "",
    default_base_url: str = DEFAULT_BASE_URL,
    now: datetime | None = None,
) -> JobPlan:
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
        rate=options["rate"],
        concurrency=options["concurrency"],
        max_attempts=options["max_attempts"],
        timeout=options["timeout"],
        batch_size=options["batch_size"],
        strict=options["strict"],
        dry_run=options["dry_run"],
        run_dir=run_dir,
        report=report,
        delimiter=options.get("delimiter"),
        sheet=options.get("sheet"),
        transport=options["transport"],
        daily_quota=options["daily_quota"],
        max_requests=options.get("max_requests"),
        quota_reset_utc=options["quota_reset_utc"],
        max_wait=options["max_wait"],
        wait=options["wait"],
        snapshot=options["snapshot"],
        guarded=options["guarded"],
        guard=dict(query.resolved) if query else {},
        max_changes=options.get("max_changes"),
        expect_rows=options.get("expect_rows"),
    )
    return JobPlan(spec, settings, options, query, spec.max_failed_share)


def check_job(plan: JobPlan) -> None:
    """Everything that can be checked without the network (`mateo-bulk job FILE --check`).

    The file was parsed and typed by load_job; here the settings are checked as a run would,
    and a file source is opened: it must exist, and its header must hold the columns.
    """
    spec, settings = plan.spec, plan.settings
    dataclasses.replace(settings, dry_run=True).check()
    if plan.options.get("base_url"):
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

    plan: JobPlan
    #: None when the query selected nothing: then nothing was sent but the query's GETs.
    run: RunSummary | None
    selected: SelectedIds | None = None
    empty_report: Path | None = None

    @property
    def report_path(self) -> Path | None:
        return self.run.report_path if self.run else self.empty_report

    @property
    def run_dir(self) -> Path:
        assert self.plan.settings.run_dir is not None
        return self.run.run_dir if self.run else self.plan.settings.run_dir

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
        if self.run.stopped is not None or self.plan.max_failed_share is None:
            return self.run.exit_code
        return 1 if self.failed_share > self.plan.max_failed_share else 0


def run_job(
    plan: JobPlan,
    *,
    on_progress: ProgressCallback | None = None,
    on_selected: Callable[[SelectedIds], None] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    confirm: Confirm | None = None,
    handle_signals: bool = False,
    stored_answers: AnswersLookup | None = None,
) -> JobSummary:
    """Run a planned job to its end (or a stop); InputError before anything is sent.

    `handle_signals` and `stored_answers` are those of `pipeline.run`: the CLI sets both.
    """
    refuse_running_loop("run_job")
    return anyio.run(
        functools.partial(
            run_job_async,
            plan,
            on_progress=on_progress,
            on_selected=on_selected,
            transport=transport,
            confirm=confirm,
            handle_signals=handle_signals,
            stored_answers=stored_answers,
        )
    )


async def run_job_async(
    plan: JobPlan,
    *,
    on_progress: ProgressCallback | None = None,
    on_selected: Callable[[SelectedIds], None] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    confirm: Confirm | None = None,
    handle_signals: bool = False,
    stored_answers: AnswersLookup | None = None,
) -> JobSummary:
    """The same as `run_job`, inside a running event loop."""
    settings = plan.settings
    start_run = functools.partial(
        run_async,
        on_progress=on_progress,
        transport=transport,
        confirm=confirm,
        handle_signals=handle_signals,
        stored_answers=stored_answers,
    )
    if plan.query is None:
        summary = await start_run(settings)
        return JobSummary(plan, summary)
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
    selected = await select_ids(plan.query, settings, run_dir, transport=transport)
    if on_selected is not None:
        on_selected(selected)
    try:
        _check_selection(settings, selected)
        if selected.rows == 0:
            # The reader refuses a file without rows; an empty selection is the normal answer
            # of a job run again, so it ends here: an empty report, nothing sent but the GETs.
            report = report_path(run_dir, settings.report)
            await anyio.to_thread.run_sync(write_report, [], report)
            return JobSummary(plan, None, selected, report)
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
    return JobSummary(plan, summary, selected)


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


def describe_job(plan: JobPlan) -> str:
    """A few lines saying what the job will do (`--check` prints them)."""
    spec, settings = plan.spec, plan.settings
    lines = [f"job {spec.name}: {spec.description or '(no description)'}"]
    if plan.query is not None:
        filters = ", ".join(f"{column}={value}" for column, value in plan.query.resolved.items())
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
    if plan.max_failed_share is not None:
        lines.append(f"  max_failed_share: {plan.max_failed_share:g}")
    return "\n".join(lines)
