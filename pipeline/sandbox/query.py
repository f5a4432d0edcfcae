"""PostgREST's query string: horizontal filters, `select`, `order`, `limit` and `offset`.

Filters use SQL's three-valued logic (a comparison with NULL is unknown, and `not.` keeps it
unknown), because that is what decides which rows a PATCH touches on the real database.
"""

from __future__ import annotations

import json
import operator
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.sandbox import schema
from pipeline.sandbox.errors import ApiError

Row = dict[str, Any]
#: True, False, or None for SQL's "unknown".
Predicate = Callable[[Row], bool | None]

RESERVED_PARAMS = frozenset({"select", "order", "limit", "offset", "columns", "on_conflict"})
_LOGIC_PARAMS = {"or": "or", "and": "and", "not.or": "or", "not.and": "and"}
_COMPARISONS: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "neq": operator.ne,
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}
_SQL_OPERATORS = {
    "eq": "=",
    "neq": "<>",
    "gt": ">",
    "gte": ">=",
    "lt": "<",
    "lte": "<=",
    "like": "~~",
    "ilike": "~~*",
}
_NESTED_LOGIC = re.compile(r"^(not\.)?(or|and)\((.*)\)$", re.DOTALL)
#: A name in ?columns= as PostgREST's parser takes it: letters, digits, `_`, `$` and spaces,
#: parts joined by `-`; or anything but a double quote inside double quotes.
_COLUMN_NAME = re.compile(r'"([^"]+)"|([\w $]+(?:-[\w $]+)*)')
#: `order=id`: the order `SandboxState.match` already returns rows in.
ID_ORDER: tuple[tuple[str, bool, bool], ...] = (("id", False, False),)


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed query string: which rows, which columns, in which order, which slice."""

    condition: Predicate | None
    #: The ids a top-level `id=eq.` / `id=in.` filter allows, for a lookup instead of a scan.
    id_candidates: frozenset[str] | None
    select: tuple[tuple[str, str], ...] | None
    has_select: bool
    #: Empty when the query string has no `order`: then PostgreSQL promises no order at all.
    order: tuple[tuple[str, bool, bool], ...]
    limit: int | None
    offset: int
    #: The names of `?columns=`, in their order, without repeats; None without the parameter.
    columns: tuple[str, ...] | None = None


def has_id_guard(pairs: Iterable[tuple[str, str]]) -> bool:
    """Whether the rows are chosen by `id=eq.<value>` or a non-empty `id=in.(...)`.

    Anything else (no id filter, `id=not.in.()`, `id=neq.x`, `id=is.not_null`) may reach every
    conversation of the organisation, so it is refused and counted as a safety violation.
    """
    for key, value in pairs:
        if key != "id":
            continue
        if value.startswith("eq.") and len(value) > 3:
            return True
        if value.startswith("in.(") and value.endswith(")") and value[4:-1].strip():
            return True
    return False


def parse_query(pairs: Sequence[tuple[str, str]], *, default_order: bool = True) -> Query:
    filters: list[Predicate] = []
    id_candidates: frozenset[str] | None = None
    select: tuple[tuple[str, str], ...] | None = None
    has_select = False
    order: tuple[tuple[str, bool, bool], ...] = ID_ORDER if default_order else ()
    limit: int | None = None
    offset = 0
    columns: tuple[str, ...] | None = None
    for key, value in pairs:
        if key == "columns":
            columns = _parse_columns(value)
        elif key == "select":
            has_select = True
            select = _parse_select(value)
        elif key == "order":
            order = _parse_order(value)
        elif key == "limit":
            limit = _parse_count("limit", value)
        elif key == "offset":
            offset = _parse_count("offset", value)
        elif key in RESERVED_PARAMS:
            continue
        elif key in _LOGIC_PARAMS:
            if not (value.startswith("(") and value.endswith(")")):
                raise _parse_error(f"{key}={value}", "logic tree")
            combined = _logic(_LOGIC_PARAMS[key], _parse_tree_items(value[1:-1]))
            filters.append(_negate(combined) if key.startswith("not.") else combined)
        else:
            predicate, ids = _parse_leaf(key, value)
            filters.append(predicate)
            if ids is not None:
                id_candidates = ids if id_candidates is None else id_candidates & ids
    condition: Predicate | None
    if not filters:
        condition = None
    elif len(filters) == 1:
        condition = filters[0]
    else:
        condition = _logic("and", filters)
    return Query(condition, id_candidates, select, has_select, order, limit, offset, columns)


# --- Filters -----------------------------------------------------------------------------------


def _parse_error(text: str, what: str = "filter") -> ApiError:
    return ApiError(
        400,
        "PGRST100",
        f'"failed to parse {what} ({text})"',
        details=f'unexpected input in "{text}"',
    )


def _parse_leaf(column: str, value: str) -> tuple[Predicate, frozenset[str] | None]:
    negated = False
    text = value
    if text.startswith("not."):
        negated = True
        text = text[4:]
    op, dot, operand = text.partition(".")
    if not dot or not (op in _COMPARISONS or op in {"in", "is", "like", "ilike"}):
        raise _parse_error(value)
    if column not in schema.COLUMN_SET:
        raise schema.undefined_column(column)
    ids: frozenset[str] | None = None
    if op == "in":
        if not (operand.startswith("(") and operand.endswith(")")):
            raise _parse_error(value)
        items = _split_list(operand[1:-1], value)
        predicate = _in_predicate(column, items)
        if column == "id" and not negated:
            ids = frozenset(schema.parse_uuid(item) for item in items)
    elif op == "is":
        predicate = _is_predicate(column, operand, value)
    elif op in ("like", "ilike"):
        predicate = _like_predicate(column, op, operand)
    else:
        predicate = _comparison(column, op, operand)
        if column == "id" and op == "eq" and not negated:
            ids = frozenset({schema.parse_uuid(operand)})
    return (_negate(predicate) if negated else predicate), ids


def _split_list(text: str, whole: str) -> list[str]:
    """Items of `in.(...)`: commas separate, double quotes protect, backslash escapes."""
    if text.strip() == "":
        return []
    items: list[str] = []
    current: list[str] = []
    quoted = False
    index = 0
    while index < len(text):
        char = text[index]
        if quoted:
            if char == "\\" and index + 1 < len(text):
                index += 1
                current.append(text[index])
            elif char == '"':
                quoted = False
            else:
                current.append(char)
        elif char == '"':
            quoted = True
        elif char == ",":
            items.append("".join(current))
            current = []
        else:
            current.append(char)
        index += 1
    if quoted:
        raise _parse_error(whole)
    items.append("".join(current))
    return items


def _operand_key(column: str) -> Callable[[Any], Any]:
    """Turn a stored value into something Python compares the way PostgreSQL does."""
    if column in schema.TIMESTAMP_COLUMNS:
        return schema.timestamp_value
    if column in schema.ENUM_COLUMNS:
        values = schema.ENUM_COLUMNS[column][1]
        return values.index
    if column in schema.JSON_COLUMNS:
        return lambda value: json.dumps(value, sort_keys=True)
    return _identity


def _identity(value: Any) -> Any:
    return value


def _cast(column: str, text: str) -> Any:
    """A filter literal as the column's type, compared through `_operand_key`."""
    if column in schema.UUID_COLUMNS:
        return schema.parse_uuid(text)
    if column in schema.TIMESTAMP_COLUMNS:
        return schema.parse_timestamp(text)
    if column in schema.BOOLEAN_COLUMNS:
        return schema.parse_boolean(text)
    if column in schema.ENUM_COLUMNS:
        return schema.ENUM_COLUMNS[column][1].index(schema.parse_enum(column, text))
    if column in schema.JSON_COLUMNS:
        return json.dumps(schema.parse_json(text), sort_keys=True)
    return text


def _comparison(column: str, op: str, operand: str) -> Predicate:
    if column in schema.JSON_COLUMNS and op not in ("eq", "neq"):
        raise _undefined_operator(column, op)
    compare = _COMPARISONS[op]
    target = _cast(column, operand)
    key = _operand_key(column)

    if key is _identity:

        def predicate(row: Row) -> bool | None:
            value = row[column]
            return None if value is None else compare(value, target)
    else:

        def predicate(row: Row) -> bool | None:
            value = row[column]
            return None if value is None else compare(key(value), target)

    return predicate


def _in_predicate(column: str, items: list[str]) -> Predicate:
    if not items:
        # PostgREST turns `in.()` into FALSE: nothing matches, and `not.in.()` matches all.
        return lambda row: False
    targets = frozenset(_cast(column, item) for item in items)
    key = _operand_key(column)

    def predicate(row: Row) -> bool | None:
        value = row[column]
        return None if value is None else key(value) in targets

    return predicate


def _is_predicate(column: str, operand: str, whole: str) -> Predicate:
    keyword = operand.lower()
    if keyword == "null":
        return lambda row: row[column] is None
    if keyword == "not_null":
        return lambda row: row[column] is not None
    if keyword in ("true", "false", "unknown"):
        if column not in schema.BOOLEAN_COLUMNS:
            raise ApiError(
                400,
                "42804",
                f"argument of IS {keyword.upper()} must be type "
                f"boolean, not type {_sql_type(column)}",
            )
        if keyword == "unknown":
            return lambda row: row[column] is None
        wanted = keyword == "true"
        return lambda row: row[column] is wanted
    raise _parse_error(whole)


def _like_predicate(column: str, op: str, pattern: str) -> Predicate:
    if column not in schema.TEXT_COLUMNS:
        raise _undefined_operator(column, op)
    parts = []
    for char in pattern:
        if char in "*%":
            parts.append(".*")
        elif char == "_":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    regex = re.compile("".join(parts), re.DOTALL | (re.IGNORECASE if op == "ilike" else 0))

    def predicate(row: Row) -> bool | None:
        value = row[column]
        return None if value is None else regex.fullmatch(value) is not None

    return predicate


def _sql_type(column: str) -> str:
    if column in schema.UUID_COLUMNS:
        return "uuid"
    if column in schema.TIMESTAMP_COLUMNS:
        return "timestamp with time zone"
    if column in schema.BOOLEAN_COLUMNS:
        return "boolean"
    if column in schema.ENUM_COLUMNS:
        return schema.ENUM_COLUMNS[column][0]
    if column in schema.JSON_COLUMNS:
        return "jsonb"
    return "text"


def _undefined_operator(column: str, op: str) -> ApiError:
    # PostgREST answers PostgreSQL's 42883 (undefined function) with 404.
    return ApiError(
        404,
        "42883",
        f"operator does not exist: {_sql_type(column)} {_SQL_OPERATORS[op]} unknown",
        hint="No operator matches the given name and argument types. You might "
        "need to add explicit type casts.",
    )


def _negate(predicate: Predicate) -> Predicate:
    def negated(row: Row) -> bool | None:
        result = predicate(row)
        return None if result is None else not result

    return negated


def _logic(kind: str, predicates: Sequence[Predicate]) -> Predicate:
    parts = tuple(predicates)
    if kind == "and":

        def combined(row: Row) -> bool | None:
            result: bool | None = True
            for part in parts:
                outcome = part(row)
                if outcome is False:
                    return False
                if outcome is None:
                    result = None
            return result
    else:

        def combined(row: Row) -> bool | None:
            result: bool | None = False
            for part in parts:
                outcome = part(row)
                if outcome is True:
                    return True
                if outcome is None:
                    result = None
            return result

    return combined


def _split_top_level(text: str) -> list[str]:
    """Split at commas outside parentheses and double quotes."""
    items: list[str] = []
    depth = 0
    quoted = False
    start = 0
    index = 0
    while index < len(text):
        char = text[index]
        if quoted:
            if char == "\\":
                index += 1
            elif char == '"':
                quoted = False
        elif char == '"':
            quoted = True
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(text[start:index])
            start = index + 1
        index += 1
    items.append(text[start:])
    return items


def _parse_tree_items(text: str) -> list[Predicate]:
    predicates: list[Predicate] = []
    for item in _split_top_level(text):
        nested = _NESTED_LOGIC.match(item)
        if nested:
            combined = _logic(nested.group(2), _parse_tree_items(nested.group(3)))
            predicates.append(_negate(combined) if nested.group(1) else combined)
            continue
        column, dot, rest = item.partition(".")
        if not dot or not column:
            raise _parse_error(item, "logic tree")
        predicates.append(_parse_leaf(column, rest)[0])
    return predicates


# --- select, order, limit ------------------------------------------------------------------------


def _parse_select(value: str) -> tuple[tuple[str, str], ...] | None:
    if value.strip() in ("", "*"):
        return None
    fields: list[tuple[str, str]] = []
    for raw in _split_top_level(value):
        item = raw.strip()
        if item == "*":
            fields.extend((column, column) for column in schema.COLUMNS)
            continue
        if "(" in item:
            name = item.split("(", 1)[0].split(":")[-1].lstrip(".")
            raise ApiError(
                400,
                "PGRST200",
                f"Could not find a relationship between "
                f"'{schema.TABLE}' and '{name}' in the schema cache",
                hint="Perhaps you meant a column of 'conversation' instead.",
            )
        alias, colon, rest = item.partition(":")
        if colon and not rest.startswith(":"):
            column = rest
        else:
            alias, column = item, item
        column = column.split("::", 1)[0]
        alias = alias.split("::", 1)[0] if not colon else alias
        if not column or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", column):
            raise _parse_error(value, "select")
        if column not in schema.COLUMN_SET:
            raise schema.undefined_column(column)
        fields.append((alias, column))
    return tuple(fields)


def _parse_order(value: str) -> tuple[tuple[str, bool, bool], ...]:
    terms: list[tuple[str, bool, bool]] = []
    for item in value.split(","):
        parts = item.strip().split(".")
        column = parts[0]
        descending = False
        nulls_first: bool | None = None
        for modifier in parts[1:]:
            if modifier in ("asc", "desc"):
                descending = modifier == "desc"
            elif modifier in ("nullsfirst", "nullslast"):
                nulls_first = modifier == "nullsfirst"
            else:
                raise _parse_error(value, "order")
        if not column:
            raise _parse_error(value, "order")
        if column not in schema.COLUMN_SET:
            raise schema.undefined_column(column)
        terms.append((column, descending, descending if nulls_first is None else nulls_first))
    return tuple(terms)


def _parse_columns(value: str) -> tuple[str, ...]:
    """The names of `?columns=`, parsed only: whether each is a column is the write's to say.

    The names form a set in PostgREST, so a repeated name counts once.
    """
    names: list[str] = []
    for item in value.split(","):
        found = _COLUMN_NAME.fullmatch(item.strip())
        if found is None:
            raise _parse_error(value, "columns parameter")
        name = found.group(1) or found.group(2).strip()
        if name not in names:
            names.append(name)
    return tuple(names)


def _parse_count(name: str, value: str) -> int:
    if not value.isdigit():
        raise _parse_error(value, name)
    return int(value)


def sort_rows(rows: list[Row], order: Sequence[tuple[str, bool, bool]]) -> list[Row]:
    """Order rows like PostgreSQL (NULLS LAST ascending, FIRST descending, unless asked)."""
    ordered = list(rows)
    for column, descending, nulls_first in reversed(order):
        key = _operand_key(column)
        nulls_flag_when_null = nulls_first == descending

        def sort_key(
            row: Row,
            column: str = column,
            key: Callable[[Any], Any] = key,
            flag: bool = nulls_flag_when_null,
        ) -> tuple[bool, Any]:
            value = row[column]
            if value is None:
                return (flag, 0)
            return (not flag, key(value))

        ordered.sort(key=sort_key, reverse=descending)
    return ordered


def project(row: Row, select: tuple[tuple[str, str], ...] | None) -> Row:
    if select is None:
        return dict(row)
    return {alias: row[column] for alias, column in select}
