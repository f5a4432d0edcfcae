"""The report's columns and row records: what one line of the report holds, made from a
RowResult or, a batch at a time, from the journal's results columns."""

from __future__ import annotations

import functools
import itertools
import json
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from pipeline.core import arrays
from pipeline.core.models import FIELDS, RowResult
from pipeline.stages.journal_schema import RESULT_COLUMNS, stored_values

if TYPE_CHECKING:
    import pyarrow

#: Report columns, a contract other tools read; add new ones at the end.
COLUMNS: tuple[str, ...] = (
    "row",
    "conversation_id",
    "outcome",
    "http_status",
    "attempts",
    "error_code",
    "error_message",
    *(f"target_{name}" for name in FIELDS),
    *(f"returned_{name}" for name in FIELDS),
    "difference",
    *(f"before_{name}" for name in FIELDS),
)


def cell(values: Mapping[str, str | None] | None, name: str) -> str | None:
    """A target or returned value as a report cell: empty = not set, "null" = JSON null.

    The same convention as the input's cells, so a report's rows can be fed back as input.
    """
    if values is None or name not in values:
        return None
    value = values[name]
    return "null" if value is None else value


def result_record(result: RowResult) -> dict[str, Any]:
    target = result.change.body()
    record: dict[str, Any] = {
        "row": result.row,
        "conversation_id": result.conversation_id,
        "outcome": result.outcome.value,
        "http_status": result.http_status,
        "attempts": result.attempts,
        "error_code": result.error_code,
        "error_message": result.error_message,
    }
    for name in FIELDS:
        record[f"target_{name}"] = cell(target, name)
    for name in FIELDS:
        record[f"returned_{name}"] = cell(result.returned, name)
    record["difference"] = result.difference
    for name in FIELDS:
        record[f"before_{name}"] = cell(result.before, name)
    return record


# The report is written from columns: record batches of the journal's results table
# (`Journal.result_batches`), turned into report columns by Arrow's compute functions, with the
# JSON the journal keeps parsed once per distinct text. A million rows take seconds, not the
# minute that a record object per row would.

_INTEGERS = {"row": "int64", "http_status": "int32", "attempts": "int32"}
#: Rows per record batch made from RowResults (and per chunk of the failures file).
BATCH_ROWS = 50_000


@functools.cache
def report_schema() -> pyarrow.Schema:
    import pyarrow as pa

    return pa.schema([(name, pa.type_for_alias(_INTEGERS.get(name, "string"))) for name in COLUMNS])


def report_batch(raw: pyarrow.RecordBatch) -> pyarrow.RecordBatch:
    """The report's columns for a batch of the journal's results columns (the same rows)."""
    import pyarrow as pa

    schema = report_schema()
    targets = _json_cells(raw.column("change"), _change_cells)
    returned = _json_cells(raw.column("returned"), _mapping_cells)
    before = _json_cells(raw.column("before"), _mapping_cells)
    columns: dict[str, Any] = {
        name: raw.column(name)
        for name in (
            "row",
            "conversation_id",
            "outcome",
            "http_status",
            "attempts",
            "error_code",
            "error_message",
            "difference",
        )
    }
    for position, name in enumerate(FIELDS):
        columns[f"target_{name}"] = targets[position]
        columns[f"returned_{name}"] = returned[position]
        columns[f"before_{name}"] = before[position]
    return pa.RecordBatch.from_arrays(
        [columns[field.name].cast(field.type) for field in schema], schema=schema
    )


def _change_cells(text: str) -> tuple[str | None, ...]:
    body = dict(json.loads(text))
    return tuple(cell(body, name) for name in FIELDS)


def _mapping_cells(text: str) -> tuple[str | None, ...]:
    values = json.loads(text)
    return tuple(cell(values, name) for name in FIELDS)


def _json_cells(column: pyarrow.Array, parse: Any) -> list[pyarrow.Array]:
    """Per FIELDS, the report cells a column of JSON texts gives, each text parsed once."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if column.null_count == len(column):
        return [pa.nulls(len(column), pa.string())] * len(FIELDS)
    encoded = pc.dictionary_encode(column)
    parsed = [parse(text) for text in encoded.dictionary.to_pylist()]
    return [
        pc.take(arrays.strings([cells[position] for cells in parsed]), encoded.indices)
        for position in range(len(FIELDS))
    ]


def raw_batches(results: Iterable[RowResult]) -> Iterator[pyarrow.RecordBatch]:
    """RowResults as record batches of the journal's results columns (what it would keep)."""
    import pyarrow as pa

    types = {"row": pa.int64(), "http_status": pa.int64(), "attempts": pa.int64()}
    schema = pa.schema([(name, types.get(name, pa.string())) for name in RESULT_COLUMNS])
    iterator = iter(results)
    while chunk := list(itertools.islice(iterator, BATCH_ROWS)):
        columns = zip(*(stored_values(result) for result in chunk), strict=True)
        yield pa.RecordBatch.from_arrays(
            [
                arrays.strings(values) if field.type == pa.string() else arrays.integers(values)
                for values, field in zip(columns, schema, strict=True)
            ],
            schema=schema,
        )


def unsent_batch(columns: Mapping[str, pyarrow.Array]) -> pyarrow.RecordBatch:
    """Report columns for rows that were not sent (a dry run's), from `row`, `conversation_id`,
    `outcome`, `error_message` and `target_<field>` columns (report cells: a value, "null", or
    null for a field left unchanged): no status, no attempt, nothing returned or read."""
    import pyarrow as pa

    schema = report_schema()
    size = len(columns["row"])
    filled = {**columns, "attempts": pa.repeat(arrays.integer(0), size)}
    return pa.RecordBatch.from_arrays(
        [
            filled[field.name].cast(field.type)
            if field.name in filled
            else pa.nulls(size, field.type)
            for field in schema
        ],
        schema=schema,
    )
