"""Verify: check an input file against the live account, row by row.

`verify_rows` reads an input file's conversations and says, row by row, whether each is at its
targets. It only reads (GETs), and every GET leaves through the one request path
(`RequestPath`): paced, retried, counted in the account's daily ledger, and paged so that a
short page is never taken for the end.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import httpx

from pipeline.api.client import returned_values
from pipeline.api.request_path import RunControl
from pipeline.commands.read_settings import ProgressCallback, ReadSettings, open_request_path
from pipeline.commands.table_output import TableWriter, cell_text, check_output_path
from pipeline.core.models import FIELDS, ConversationIds, InvalidRow, RowRequest, same_value
from pipeline.stages.input.columns import ID_FIELD
from pipeline.stages.input.opening import open_input
from pipeline.stages.validate import validate_row

#: Input rows verified per batch of reads: memory stays flat however long the file is.
VERIFY_CHUNK_ROWS = 1_000
#: Rows not at their target that a verify summary quotes; the report holds them all.
EXAMPLES = 5


class VerifyState(enum.StrEnum):
    """What verify found for one input row; the report's `state` column."""

    AT_TARGET = "at_target"
    DIFFERS = "differs"
    #: No conversation has this id (deleted, or not visible to this token).
    GONE = "gone"
    #: The row cannot be checked: a bad id or target, or no target at all.
    INVALID = "invalid"


VERIFY_COLUMNS: tuple[str, ...] = (
    "row",
    ID_FIELD,
    "state",
    *(f"target_{name}" for name in FIELDS),
    *(f"current_{name}" for name in FIELDS),
    "detail",
)


@dataclass(frozen=True)
class VerifySummary:
    """How many input rows are at their targets, and what the check cost."""

    rows: int
    #: Rows by state, every state present (zero included).
    counts: Mapping[VerifyState, int]
    requests: int
    retries: int
    report_path: Path | None
    #: The first rows not at their target, one line each ("row 3 <id>: status is open, …").
    examples: tuple[str, ...] = ()

    @property
    def exit_code(self) -> int:
        """0 when every row is at its target; 1 otherwise (invalid rows included)."""
        return 0 if self.counts[VerifyState.AT_TARGET] == self.rows else 1


def verify_rows(
    input: str | Path,
    settings: ReadSettings,
    *,
    column_map: Mapping[str, str] | None = None,
    fixed_values: Mapping[str, str | None] | None = None,
    delimiter: str | None = None,
    sheet: str | int | None = None,
    report: str | Path | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    on_progress: ProgressCallback | None = None,
) -> VerifySummary:
    """Read the conversations of an input file and compare each with the row's targets.

    The input is read as `run` reads it (`column_map`, `fixed_values` as `--map`/`--set`,
    `delimiter`, `sheet`); its expect_* columns are not targets and are ignored. Each row is
    `at_target`, `differs`, `gone` or `invalid`; `report` (.csv or .parquet) gets one line per
    row with the current values. Sends GETs only. Raises InputError (nothing sent) for a bad
    file or setting, RunStopped or RemoteError.
    """
    return anyio.run(
        partial(
            verify_rows_async,
            input,
            settings,
            column_map=column_map,
            fixed_values=fixed_values,
            delimiter=delimiter,
            sheet=sheet,
            report=report,
            transport=transport,
            on_progress=on_progress,
        )
    )


async def verify_rows_async(
    input: str | Path,
    settings: ReadSettings,
    *,
    column_map: Mapping[str, str] | None = None,
    fixed_values: Mapping[str, str | None] | None = None,
    delimiter: str | None = None,
    sheet: str | int | None = None,
    report: str | Path | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    on_progress: ProgressCallback | None = None,
) -> VerifySummary:
    """The same as `verify_rows`, inside a running event loop."""
    report_path = None if report is None else check_output_path(Path(report), flag="--report")
    fixed = dict(fixed_values or {})
    control = RunControl()
    counts = dict.fromkeys(VerifyState, 0)
    examples: list[str] = []
    with open_input(input, column_map=column_map, delimiter=delimiter, sheet=sheet) as input_file:
        settings.check()
        with TableWriter(VERIFY_COLUMNS, report_path) as writer:
            async with open_request_path(settings, control, transport) as request_path:
                for chunk in input_file.chunks(VERIFY_CHUNK_ROWS):
                    judged = [validate_row(row, fixed) for row in chunk]
                    ids = [
                        each.conversation_id for each in judged if not isinstance(each, InvalidRow)
                    ]
                    current = await request_path.read_rows(ConversationIds(ids)) if ids else {}
                    if control.stop_reason is not None:
                        raise control.stop_reason
                    records = [_verify_record(each, current) for each in judged]
                    writer.write(records)
                    for record in records:
                        state = VerifyState(record["state"])
                        counts[state] += 1
                        if state is not VerifyState.AT_TARGET and len(examples) < EXAMPLES:
                            examples.append(_example(record))
                    if on_progress is not None:
                        on_progress(sum(counts.values()), control.requests)
    return VerifySummary(
        sum(counts.values()),
        counts,
        control.requests,
        control.retries,
        report_path,
        tuple(examples),
    )


def _verify_record(
    judged: RowRequest | InvalidRow, current: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    record: dict[str, Any] = {"row": judged.row, ID_FIELD: judged.conversation_id}
    if isinstance(judged, InvalidRow):
        return {**record, "state": VerifyState.INVALID.value, "detail": judged.reason}
    targets = judged.change.body()
    record.update(_cells("target", targets))
    found = current.get(judged.conversation_id)
    if found is None:
        record["state"] = VerifyState.GONE.value
        record["detail"] = "no such conversation (deleted, or not visible to this token)"
        return record
    values = returned_values(dict(found))
    record.update(_cells("current", values))
    differences = [
        f"{name} is {cell_text(values, name) or '(not returned)'}, "
        f"target {cell_text(targets, name)}"
        for name in targets
        if name not in values or not same_value(values[name], targets[name])
    ]
    record["state"] = (VerifyState.DIFFERS if differences else VerifyState.AT_TARGET).value
    record["detail"] = "; ".join(differences)
    return record


def _cells(prefix: str, values: Mapping[str, str | None]) -> dict[str, str]:
    """The report's `<prefix>_<field>` cells (target_status, current_status, …) of `values`."""
    return {f"{prefix}_{name}": cell_text(values, name) for name in FIELDS}


def _example(record: Mapping[str, Any]) -> str:
    return f"row {record['row']} {record[ID_FIELD]}: {record['state']}: {record['detail']}"
