"""Arrow arrays and scalars made from Python values, for the stages that work in columns.

`pyarrow.array()` and `pyarrow.scalar()` (and every compute function given a plain Python value,
which goes through them) import pandas the first time they convert a Python value, when pandas
is installed, to recognise pandas objects: some 40 MB of memory, and a noticeable share of a
big dry run's time, for a library mateo-bulk never uses. These helpers build the same arrays
from buffers; the stages pass Arrow scalars to compute functions for the same reason.
"""

from __future__ import annotations

import array
import functools
import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import pyarrow


def strings(values: Sequence[str | None]) -> pyarrow.Array:
    """A string array of `values` (None: null)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    present = [value for value in values if value is not None]
    complete = len(present) == len(values)
    texts: Sequence[str] = (
        present if complete else ["" if each is None else each for each in values]
    )
    joined = "".join(texts)
    data = joined.encode()
    # Lengths in bytes: the characters' when all are ASCII, as they mostly are.
    lengths: Iterable[int] = (
        map(len, texts) if len(data) == len(joined) else (len(each.encode()) for each in texts)
    )
    offsets = array.array("i", [0])
    offsets.extend(itertools.accumulate(lengths))
    result = pa.Array.from_buffers(
        pa.string(), len(values), [None, pa.py_buffer(offsets), pa.py_buffer(data)]
    )
    if complete:
        return result
    valid = flags([value is not None for value in values])
    masked: pyarrow.Array = pc.if_else(valid, result, null(pa.string()))
    return masked


def integers(values: Sequence[int | None]) -> pyarrow.Array:
    """An int64 array of `values` (None: null)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(values, range) and len(values) > 1:
        # Summed by Arrow: building it from a million Python ints takes ~0.07 s.
        steps = pa.repeat(integer(values.step), len(values))
        summed: pyarrow.Array = pc.add(
            pc.cumulative_sum(steps), integer(values.start - values.step)
        )
        return summed
    complete = isinstance(values, range) or None not in values
    filled = cast("Sequence[int]", values) if complete else [value or 0 for value in values]
    data = array.array("q", filled)
    result = pa.Array.from_buffers(pa.int64(), len(values), [None, pa.py_buffer(data)])
    if complete:
        return result
    valid = flags([value is not None for value in values])
    masked: pyarrow.Array = pc.if_else(valid, result, null(pa.int64()))
    return masked


def record_batch(
    records: Sequence[Mapping[str, Any]], schema: pyarrow.Schema
) -> pyarrow.RecordBatch:
    """`pyarrow.RecordBatch.from_pylist(records, schema)` for a schema of strings and int64s (a
    name a record lacks: null)."""
    import pyarrow as pa

    columns = [
        (integers if pa.types.is_int64(field.type) else strings)(
            [record.get(field.name) for record in records]
        )
        for field in schema
    ]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def flags(values: Sequence[bool]) -> pyarrow.Array:
    """A boolean array of `values`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    data = pa.py_buffer(bytes(map(bool, values)))
    result: pyarrow.Array = pc.cast(
        pa.Array.from_buffers(pa.uint8(), len(values), [None, data]), pa.bool_()
    )
    return result


@functools.lru_cache(maxsize=256)
def string(value: str) -> pyarrow.Scalar:
    """A string scalar."""
    return strings([value])[0]


@functools.lru_cache(maxsize=256)
def integer(value: int) -> pyarrow.Scalar:
    """An int64 scalar."""
    return integers([value])[0]


@functools.cache
def boolean(value: bool) -> pyarrow.Scalar:
    """A boolean scalar."""
    return flags([value])[0]


@functools.cache
def null(kind: pyarrow.DataType) -> pyarrow.Scalar:
    """A null scalar of type `kind`."""
    import pyarrow as pa

    return pa.nulls(1, kind)[0]
