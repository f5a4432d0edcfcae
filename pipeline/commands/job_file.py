"""Job files: reading and checking a reviewed TOML file that says what a run reads and sets.

load_job(path) reads the file with tomllib into a frozen JobSpec, refusing an unknown key or a
wrong type with the file, line and key named. The keys of [source], [limits], [safety], [output]
and [api] are the run options of RunSettings (their checks come with them) and a few of the
command line's own (quiet, log_format, metrics_file, token_file, sandbox). Planning and running
a job is pipeline.commands.jobs.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.commands.metrics import SUFFIX as METRICS_SUFFIX
from pipeline.commands.notify import CONDITIONS, NotifySpec, check_form, check_on
from pipeline.commands.query_source import check_filter
from pipeline.core.errors import InputError
from pipeline.core.models import FIELDS
from pipeline.orchestrator.options import (
    Choice,
    Invalid,
    Number,
    got,
    toml_boolean,
    toml_text,
)
from pipeline.orchestrator.settings import run_options
from pipeline.stages.input.columns import MAPPABLE_FIELDS
from pipeline.stages.validate import UNSET, parse_cell

LOG_FORMATS = ("text", "json")


def _metrics_file(value: Any) -> str:
    text = toml_text(value)
    if not text.strip() or Path(text).suffix != METRICS_SUFFIX:
        raise Invalid(
            f"must name a file ending in {METRICS_SUFFIX} (node_exporter's textfile collector "
            f"reads only those), {got(value)}"
        )
    return text


#: The keys of the command line's own flags (not run settings), by table, and their checks.
_COMMAND_KEYS: dict[str, dict[str, Callable[[Any], Any]]] = {
    "output": {
        "quiet": toml_boolean,
        "log_format": Choice(LOG_FORMATS).from_toml,
        "metrics_file": _metrics_file,
    },
    "api": {"token_file": toml_text, "sandbox": toml_boolean},
}


def _option_checks() -> dict[str, dict[str, Callable[[Any], Any]]]:
    tables: dict[str, dict[str, Callable[[Any], Any]]] = {
        table: {} for table in ("source", "limits", "safety", "output", "api")
    }
    for option in run_options():
        tables[option.table][option.name] = option.from_toml
    for table, keys in _COMMAND_KEYS.items():
        tables[table].update(keys)
    return tables


#: The keys of each table and how each is checked. Every `run` flag has one, named as the flag
#: with underscores, in the table of the flag's group in `mateo-bulk run --help` (but
#: --notify-url: `[notify] url`, read apart because its URL may come from a variable or file).
#: A run option's key and check come from its RunSettings field.
_OPTIONS = _option_checks()
#: Every option a job file or a flag may give, by its flag's name with underscores.
OPTION_NAMES: frozenset[str] = frozenset(name for keys in _OPTIONS.values() for name in keys)
_TABLES = ("source", "set", "limits", "safety", "output", "api", "notify")
_TOP_KEYS = ("description", "max_failed_share", *_TABLES)
_SOURCE_KEYS = ("file", "map", "query", *_OPTIONS["source"])
#: `[notify] url` is the job's `--notify-url`; `on` says when to send (pipeline.commands.notify).
_NOTIFY_KEYS = ("url", "on")
#: What a job gets for an option neither its file nor a flag gives (RunSettings' defaults).
JOB_DEFAULTS: dict[str, Any] = {
    # base_url's None: MATEO_BASE_URL or Mateo's URL (resolve_job's default_base_url).
    **{option.name: option.default for option in run_options()},
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
        except Invalid as error:
            raise locator.error(keys, str(error)) from None

    for key, value in data.items():
        if key not in _TOP_KEYS:
            what = "table" if isinstance(value, dict) else "key"
            raise locator.error((key,), f"unknown {what}; a job file has {', '.join(_TOP_KEYS)}")
        if key in _TABLES and not isinstance(value, dict):
            raise locator.error((key,), f"must be a table, [{key}], {got(value)}")
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
    description = check(("description",), data.get("description", ""), toml_text)
    share = None
    if "max_failed_share" in data:
        share = check(
            ("max_failed_share",),
            data["max_failed_share"],
            Number(float, 0, high=1).from_toml,
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
                ("notify", "url"), f'expected a URL, "env:NAME" or "file:PATH", {got(url)}'
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
        for key in ("map", *_OPTIONS["source"]):
            if key in table:
                raise locator.error(("source", key), "is for a file source, not a query")
        query = table["query"]
        if not isinstance(query, dict):
            raise locator.error(("source", "query"), f"must be a table, {got(query)}")
        if not query:
            raise locator.error(
                ("source", "query"),
                "needs at least one filter: a query without one would select every conversation",
            )
        filters: dict[str, str] = {}
        for column, value in query.items():
            keys = ("source", "query", column)
            if not isinstance(value, str):
                raise locator.error(keys, f'expected a filter such as "eq.open", {got(value)}')
            try:
                check_filter(column, value)
            except ValueError as error:
                raise locator.error(keys, str(error)) from None
            filters[column] = value
        return QuerySource(filters), column_map
    file = table["file"]
    if not isinstance(file, str) or not file.strip():
        raise locator.error(("source", "file"), f"expected a file path, {got(file)}")
    mapping = table.get("map", {})
    if not isinstance(mapping, dict):
        raise locator.error(("source", "map"), f"must be a table, {got(mapping)}")
    for name, column in mapping.items():
        keys = ("source", "map", name)
        if name not in MAPPABLE_FIELDS:
            raise locator.error(keys, f"unknown field; fields are {', '.join(MAPPABLE_FIELDS)}")
        if not isinstance(column, str) or not column.strip():
            raise locator.error(keys, f"expected a column name, {got(column)}")
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
            raise locator.error(keys, f'expected a string (or "null"), {got(raw)}')
        try:
            value = parse_cell(name, raw)
        except ValueError as error:
            raise locator.error(keys, str(error)) from None
        if value is UNSET:
            raise locator.error(keys, 'empty value; give a value (or "null" for assignee_id)')
        values[name] = value  # type: ignore[assignment]  # UNSET is excluded above
    return values
