"""DataFrames both ways: a pandas DataFrame or a pyarrow Table as a run's input, the report back
as a DataFrame.

A frame lives only as long as the process that holds it, and a run must outlive that process
(`resume` reads its input again, by row number). So a frame is written into the run directory
as Parquet before anything is validated, and the run reads that file like any Parquet input:
the same columns, the same validation, the same journal, and a resume that needs no frame.

This module imports pandas only in `report_frame` (a DataFrame given as input comes with the
pandas its caller imported), so a run from a file never loads it; pandas is the `frames` extra:
`pip install 'mateo-bulk[frames]'`.
"""

from __future__ import annotations

import csv
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core.errors import InputError
from pipeline.core.models import Outcome
from pipeline.core.run_dir import RunDir
from pipeline.stages.input.columns import MAPPABLE_FIELDS, resolve_columns
from pipeline.stages.input.input_file import first_line

if TYPE_CHECKING:
    import pandas
    import pyarrow

#: How messages name a frame's rows (its copy is a file the user never made).
FRAME_NAME = "the DataFrame"
PLAN_FRAME_NAME = "the plan DataFrame"
#: The name a run directory gets from a frame, as one gets its input file's name.
FRAME_STEM = "dataframe"
PANDAS_MISSING = "needs pandas: pip install 'mateo-bulk[frames]' (pandas 2.2 or later)"


def is_frame(value: object) -> bool:
    """Whether `value` is a pandas DataFrame or a pyarrow Table.

    Neither library is imported to find out: an object of one can only exist once its library
    was imported, so a module not yet loaded answers "no" for free.
    """
    pandas = sys.modules.get("pandas")
    if pandas is not None and isinstance(value, pandas.DataFrame):
        return True
    pyarrow = sys.modules.get("pyarrow")
    return pyarrow is not None and isinstance(value, pyarrow.Table)


def save_frame(frame: Any, run_dir: Path, column_map: Mapping[str, str]) -> Path:
    """Write `frame` to the run directory as Parquet and return the file's path.

    Its columns are checked first, as a file's header is, so that a frame without a
    conversation_id column is refused (InputError, one line) before the run directory is made.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = _as_table(frame)
    # (An unknown column_map field is the reader's to refuse, as for a file.)
    if all(field in MAPPABLE_FIELDS for field in column_map):
        # The reader's own header check, so a frame's columns are judged (and explained) as a
        # file's are; only the name in its messages differs.
        indexes = resolve_columns(table.column_names, column_map, FRAME_NAME)
        # Only the columns the run reads: a column of lists beside them is no concern of it.
        for index in sorted(set(indexes.values())):
            column_type = table.schema.types[index]
            if pa.types.is_nested(column_type):
                raise InputError(
                    f"{FRAME_NAME}: column {table.column_names[index]!r} holds nested values "
                    f"({column_type}); it must hold one plain value per row"
                )
    if table.num_rows == 0:
        raise InputError(f"{FRAME_NAME} has columns but no rows")
    run_dir.mkdir(parents=True, exist_ok=True)
    path = RunDir(run_dir).frame
    partial = path.with_name(f".{path.name}.partial")
    try:
        pq.write_table(table, partial)
    except (pa.ArrowException, ValueError) as error:
        partial.unlink(missing_ok=True)
        raise InputError(f"{FRAME_NAME} cannot be kept as Parquet: {first_line(error)}") from None
    # Under its name only once complete: a resume must never find half a frame.
    partial.replace(path)
    return path


def save_plan_frame(frame: Any, run_dir: Path) -> Path:
    """Write a plan given as a frame (plan.csv read into pandas, its rows filtered, say) into
    the run directory as the CSV file a plan is, and return its path: `apply_plan` reads it as
    it reads any plan, and refuses it as any plan if a column or a before-value is missing."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    table = _as_table(frame)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = RunDir(run_dir).plan_frame
    try:
        pa_csv.write_csv(table, path)
    except (pa.ArrowException, ValueError) as error:
        raise InputError(f"{PLAN_FRAME_NAME} cannot be kept as CSV: {first_line(error)}") from None
    return path


def _as_table(frame: Any) -> pyarrow.Table:
    import pyarrow as pa

    if isinstance(frame, pa.Table):
        return frame
    names = [str(name) for name in frame.columns]
    if len(set(names)) != len(names):
        twice = next(name for name in names if names.count(name) > 1)
        raise InputError(f"{FRAME_NAME} has more than one column named {twice!r}; keep one")
    # Column by column (pandas' index, its own row labels, is not a column of the input).
    columns = []
    for position in range(len(names)):
        series = frame.iloc[:, position]
        try:
            columns.append(pa.Array.from_pandas(series))
        except (pa.ArrowException, ValueError, TypeError):
            # Values of mixed types (numbers and text, as a spreadsheet column often holds)
            # have no Arrow type: each is kept as its text, which is how the Parquet reader
            # reads any value that is not text, and the row is judged on that.
            missing = series.isna().tolist()
            texts = [
                None if gone is True else str(value)
                for value, gone in zip(series.tolist(), missing, strict=True)
            ]
            columns.append(pa.array(texts, type=pa.string()))
    return pa.Table.from_arrays(columns, names=names)


def report_frame(run_dir: Path, report_path: Path | None = None) -> pandas.DataFrame:
    """The run's report (the columns of report.csv, in row order) as a pandas DataFrame.

    Read from the journal, not parsed back from the report file, so the types are the report's
    own whatever its format: row, http_status and attempts nullable integers (<NA> where no
    answer came), outcome a categorical of every outcome (counts show the zeros too), the rest
    nullable strings with <NA> for "not set" and "null" for JSON null, as in the report.
    """
    try:
        import pandas as pd
    except ImportError:
        raise ImportError(f"RunSummary.report_frame() {PANDAS_MISSING}") from None
    import pyarrow as pa

    from pipeline.stages.journal import Journal
    from pipeline.stages.report_columns import report_batch, report_schema

    with Journal.open(run_dir) as journal:
        batches = [report_batch(raw) for raw in journal.result_batches()]
    table = pa.Table.from_batches(batches, schema=report_schema())
    for name, column in _carried_columns(report_path, table.num_rows):
        table = table.append_column(name, column)
    nullable = {
        pa.int64(): pd.Int64Dtype(),
        pa.int32(): pd.Int32Dtype(),
        pa.string(): pd.StringDtype(),
    }
    frame = table.to_pandas(types_mapper=nullable.get)
    frame["outcome"] = pd.Categorical(
        frame["outcome"], categories=[outcome.value for outcome in Outcome]
    )
    return frame


def _carried_columns(report_path: Path | None, rows: int) -> list[tuple[str, Any]]:
    """The input's own columns that the report file carries after the report's (see
    `report.InputCells`), as strings: they are the input's, not the journal's."""
    import pyarrow as pa

    from pipeline.stages.report_columns import COLUMNS

    if report_path is None or not report_path.is_file():
        return []
    suffix = report_path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        names = pq.read_schema(report_path).names[len(COLUMNS) :]
        table = pq.read_table(report_path, columns=names) if names else None
    elif suffix == ".csv":
        import pyarrow.csv as pa_csv

        with report_path.open(newline="", encoding="utf-8") as file:
            names = next(csv.reader(file))[len(COLUMNS) :]
        table = None
        if names:
            table = pa_csv.read_csv(
                report_path,
                convert_options=pa_csv.ConvertOptions(
                    include_columns=names,
                    column_types=dict.fromkeys(names, pa.string()),
                    strings_can_be_null=False,
                ),
            )
    else:
        return []
    if table is None or table.num_rows != rows:
        return []
    return [(name, table.column(index).cast(pa.string())) for index, name in enumerate(names)]
