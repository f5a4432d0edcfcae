"""The columnar paths a big file takes agree with the row-at-a-time rules they replace.

Journal reads, report writers and the dry run work on batches of columns; these tests hold them
to the records (`RowResult`, `result_record`, `csv.DictWriter`) and rules (`validate_row`, one
target per conversation) that say what the answer is.
"""

from __future__ import annotations

import csv
import io
import sqlite3
import subprocess
import sys
import threading
from contextlib import closing
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core import arrays
from pipeline.core.models import FIELDS, STATUSES, FieldValues, InvalidRow, Outcome, RowResult
from pipeline.orchestrator.runner import RunSettings, run
from pipeline.stages.input.input_file import DEFAULT_CHUNK_ROWS
from pipeline.stages.input.opening import open_input
from pipeline.stages.journal import Journal
from pipeline.stages.report import write_report, write_report_batches
from pipeline.stages.report_columns import COLUMNS, result_record
from pipeline.stages.validate import validate_row
from tests.helpers import AGENTS, INBOXES, REPO, read_report, write_csv

ID_1 = "0e5e1b7c-3c0a-4a4b-9c8d-1234567890ab"
ID_2 = "7d9f0c1e-5b2a-4c3d-8e4f-0a1b2c3d4e5f"

texts = st.one_of(
    st.none(),
    st.text(max_size=12),
    st.sampled_from(["a,b", 'say "hi"', "line\nbreak", "cr\rhere", "\x1fsep", "é😀", " "]),
)
values = st.one_of(st.none(), st.sampled_from([ID_1, "closed", "open"]))
changes = st.lists(st.sampled_from(FIELDS), unique=True).flatmap(
    lambda names: st.tuples(*(values for _ in names)).map(
        lambda found: FieldValues(tuple(zip(sorted(names, key=FIELDS.index), found, strict=True)))
    )
)
mappings = st.one_of(st.none(), st.dictionaries(st.sampled_from(FIELDS), values))
results = st.builds(
    RowResult,
    st.integers(1, 10**6),
    st.one_of(st.sampled_from([ID_1, ID_2, "", "x\x1fy", "[x", "1,2"]), st.text(max_size=8)),
    st.sampled_from(list(Outcome)),
    change=changes,
    http_status=st.one_of(st.none(), st.sampled_from([200, 404, 503])),
    attempts=st.integers(0, 5),
    error_code=texts,
    error_message=texts,
    returned=mappings,
    difference=texts,
    before=mappings,
)


def dict_writer_csv(records: list[RowResult]) -> bytes:
    """The report as csv.DictWriter writes result_record: what the CSV report always was."""
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(result_record(result) for result in records)
    return buffer.getvalue().encode()


@pytest.mark.long
@settings(max_examples=100, deadline=None)
@given(st.lists(results, max_size=30, unique_by=lambda result: result.row))
def test_the_csv_report_is_the_csv_modules_byte_for_byte(
    tmp_path_factory: pytest.TempPathFactory, records: list[RowResult]
) -> None:
    """The CSV report, built by Arrow's string functions, has the very bytes csv.DictWriter
    writes: the same quoting (only cells with , " or a line break), \\r\\n, empty for None."""
    records.sort(key=lambda result: result.row)
    path = tmp_path_factory.mktemp("report") / "report.csv"
    assert write_report(records, path) == len(records)
    assert path.read_bytes() == dict_writer_csv(records)


@pytest.mark.long
@settings(max_examples=60, deadline=None)
@given(
    st.lists(results, min_size=1, max_size=40, unique_by=lambda result: result.row),
    st.sampled_from([1, 3, 7, 1000]),
)
def test_the_journal_hands_over_its_results_in_columns_as_recorded(
    tmp_path_factory: pytest.TempPathFactory, records: list[RowResult], batch_rows: int
) -> None:
    """Journal.result_batches gives every recorded result, in row order, with every value
    as `results()` gives it: gaps in the row numbers, nulls, a separator inside an id."""
    run_dir = tmp_path_factory.mktemp("journal")
    with Journal.create(run_dir, {}) as journal:
        journal.record(records)
        expected = [result_record(result) for result in journal.results()]
        report = run_dir / "again.csv"
        assert write_report_batches(journal.result_batches(batch_rows), report) == len(records)
        rows = [row for batch in journal.result_batches(batch_rows) for row in batch.to_pylist()]
    assert [row["row"] for row in rows] == sorted(result.row for result in records)
    assert report.read_bytes() == dict_writer_csv(list(journal_results(run_dir)))
    parquet = run_dir / "again.parquet"
    with Journal.open(run_dir) as journal:
        write_report_batches(journal.result_batches(batch_rows), parquet)
    assert pq.read_table(parquet).to_pylist() == expected


def journal_results(run_dir: Path) -> list[RowResult]:
    with Journal.open(run_dir) as journal:
        return list(journal.results())


def reference_dry_run(path: Path) -> list[dict[str, str]]:
    """The report of a dry run, worked out row by row: validate_row, then the conversations
    listed with different targets (every row of them invalid), then each row as a report line."""
    with open_input(path) as input_file:
        checked = [validate_row(row, {}) for chunk in input_file.chunks() for row in chunk]
    rows_of: dict[str, list[int]] = {}
    changes_of: dict[str, set[FieldValues]] = {}
    for each in checked:
        if isinstance(each, InvalidRow):
            continue
        rows_of.setdefault(each.conversation_id, []).append(each.row)
        changes_of.setdefault(each.conversation_id, set()).add(each.change)
    conflicting = {key: rows for key, rows in rows_of.items() if len(changes_of[key]) > 1}
    lines = []
    for each in checked:
        if isinstance(each, InvalidRow):
            result = RowResult(
                each.row, each.conversation_id, Outcome.INVALID, error_message=each.reason
            )
        elif each.conversation_id in conflicting:
            result = RowResult(
                each.row,
                each.conversation_id,
                Outcome.INVALID,
                change=each.change,
                error_message=twins_message(conflicting[each.conversation_id], each.row),
            )
        else:
            result = RowResult(each.row, each.conversation_id, Outcome.PLANNED, change=each.change)
        record = result_record(result)
        lines.append({name: "" if value is None else str(value) for name, value in record.items()})
    return lines


def twins_message(rows: list[int], row: int) -> str:
    """Why a row of a conversation listed with different targets is invalid: the other rows."""
    others = [each for each in rows if each != row]
    shown = ", ".join(map(str, others[:3]))
    if len(others) > 3:
        shown += f" and {len(others) - 3} more"
    plural = "s" if len(others) > 1 else ""
    return (
        f"the conversation is also listed in row{plural} {shown} with different targets; "
        "give each conversation one target"
    )


def messy_rows() -> list[dict[str, str]]:
    """Valid rows, repeats (identical and with another target), invalid and blank rows."""
    rows = []
    for number in range(240):
        conversation_id = f"{number:08x}-0000-4000-8000-{number:012x}"
        rows.append(
            {
                "conversation_id": conversation_id.upper() if number % 7 == 0 else conversation_id,
                "inbox_id": INBOXES[number % len(INBOXES)] if number % 3 else "",
                "assignee_id": "null" if number % 11 == 0 else AGENTS[number % len(AGENTS)],
                "status": ["open", "Closed", "archived", ""][number % 4],
            }
        )
    rows += [dict(rows[5]), dict(rows[9], status="open"), dict(rows[9], status="closed")]
    rows += [
        {"conversation_id": "not-a-uuid", "status": "open"},
        {"conversation_id": f" {ID_1} ", "status": "done"},
        {"conversation_id": ID_2, "inbox_id": "null"},
        {"conversation_id": ID_2},
        {"conversation_id": "", "status": "open"},
        {"conversation_id": "\t" + ID_1, "status": "open"},
        {"conversation_id": " "},
    ]
    return rows


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_dry_run_reports_what_the_row_by_row_rules_say(tmp_path: Path, suffix: str) -> None:
    """A dry run (columns from the validated spool straight to the journal and the report)
    reports each row as validating it alone and then the file's duplicates decide: planned
    with its change, invalid with its reason, or invalid as listed with another target."""
    source = write_csv(tmp_path / "in.csv", messy_rows())
    path = source
    if suffix == ".parquet":
        path = tmp_path / "in.parquet"
        with source.open(newline="", encoding="utf-8") as file:
            records = list(csv.DictReader(file))
        pq.write_table(pa.Table.from_pylist(records), path)
    summary = run(
        RunSettings(path, dry_run=True, run_dir=tmp_path / "run", report=tmp_path / "r.csv")
    )
    expected = reference_dry_run(path)
    assert read_report(tmp_path / "r.csv") == expected
    assert summary.total_rows == len(expected)  # the blank row is neither counted nor reported
    assert summary.counts[Outcome.INVALID] == sum(line["outcome"] == "invalid" for line in expected)
    # The journal holds the same rows: `mateo-bulk report` writes the same file again.
    with Journal.open(tmp_path / "run") as journal:
        again = [
            {
                name: "" if value is None else str(value)
                for name, value in result_record(each).items()
            }
            for each in journal.results()
        ]
        assert again == expected


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_dry_run_and_its_report_never_import_pandas(tmp_path: Path, suffix: str) -> None:
    """pyarrow imports pandas, when it is installed (as it is here), the first time it turns a
    Python value into Arrow: ~40 MB and a noticeable start-up that a big dry run, `status` and
    `report` have no use for. They build their Arrow values from buffers instead, the
    fix-and-rerun file of invalid rows too (Parquet for a Parquet input)."""
    path = write_csv(tmp_path / "in.csv", messy_rows())
    if suffix == ".parquet":
        table = pa_csv.read_csv(
            path,
            convert_options=pa_csv.ConvertOptions(
                strings_can_be_null=False,
                column_types={name: pa.string() for name in ("conversation_id", *FIELDS)},
            ),
        )
        path = tmp_path / "in.parquet"
        pq.write_table(table, path)
    code = f"""
import sys
import threading
from pathlib import Path
from pipeline.orchestrator.runner import RunSettings, run
from pipeline.orchestrator.status import export_report, run_status
run(RunSettings({str(path)!r}, dry_run=True, run_dir=Path({str(tmp_path / "run")!r}),
                fixed_values={{"status": "closed"}}))
run_status({str(tmp_path / "run")!r})
for name in ("again.csv", "again.parquet", "again.jsonl"):
    export_report({str(tmp_path / "run")!r}, Path({str(tmp_path)!r}) / name)
print("pandas" in sys.modules)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "run" / f"report-failures{suffix}").is_file()
    assert result.stdout.strip() == "False"


def test_a_reader_that_stops_early_leaves_no_reading_thread(tmp_path: Path) -> None:
    """result_batches reads ahead on a thread of its own; a caller that takes one batch and
    stops (an error while writing a report, say) ends that thread too."""
    records = [RowResult(row, ID_1, Outcome.PLANNED) for row in range(1, 1001)]
    with Journal.create(tmp_path / "run", {}) as journal:
        journal.record(records)
        batches = journal.result_batches(batch_rows=10)
        assert next(batches).num_rows == 10
        batches.close()
        assert not any(thread.name == "journal-reader" for thread in threading.enumerate())
        assert sum(batch.num_rows for batch in journal.result_batches(batch_rows=10)) == 1000


def test_a_dry_run_and_status_start_without_the_sandbox_or_an_http_transport(
    tmp_path: Path,
) -> None:
    """`mateo-bulk run --dry-run` and `status` import neither the sandbox's web server
    (uvicorn) nor the HTTP transport (aiohttp): a dry run sends nothing, and each costs a
    tenth of a second or more at every start of the command."""
    path = write_csv(tmp_path / "in.csv", messy_rows())
    run_dir = tmp_path / "run"
    code = f"""
import sys
from pipeline.cli.main import main
main(["run", {str(path)!r}, "--dry-run", "--quiet", "--set", "status=closed",
      "--run-dir", {str(run_dir)!r}])
main(["status", {str(run_dir)!r}])
print([name for name in ("uvicorn", "aiohttp") if name in sys.modules])
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"
    assert (run_dir / "report.csv").is_file()


def test_a_dry_run_stops_when_its_input_is_rewritten_meanwhile(tmp_path: Path) -> None:
    """A dry run reports the rows as validated, from its spool; when the file is rewritten
    while it records them, it stops (exit 3) saying so, as a real run does: its report would
    describe a file that is no longer there."""
    rows = [
        {"conversation_id": f"{number:08x}-0000-4000-8000-{number:012x}", "status": "open"}
        for number in range(DEFAULT_CHUNK_ROWS + 10)  # two spooled batches
    ]
    path = write_csv(tmp_path / "in.csv", rows)

    def rewrite(progress: object) -> None:
        with path.open("a", encoding="utf-8") as file:
            file.write(f"{ID_1},,,closed\n")

    summary = run(RunSettings(path, dry_run=True, run_dir=tmp_path / "run"), on_progress=rewrite)
    assert summary.stopped is not None and summary.exit_code == 3
    assert "was changed during the run" in str(summary.stopped)
    assert sum(summary.counts.values()) == DEFAULT_CHUNK_ROWS


# No deadline: a million-number range takes a while on a machine busy with the parallel suite.
@settings(deadline=None)
@given(st.integers(-(10**6), 10**6), st.integers(-(10**6), 10**6), st.integers(-7, 7))
def test_an_array_made_from_a_range_holds_its_numbers(start: int, stop: int, step: int) -> None:
    """Row numbers come as ranges, which `arrays.integers` makes by Arrow's arithmetic rather
    than number by number: the same int64 values, none null, for any range."""
    numbers = range(start, stop, step or 1)
    made = arrays.integers(numbers)
    assert made.type == pa.int64() and made.null_count == 0
    assert made.to_pylist() == list(numbers)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(st.integers(1, 60), st.sampled_from([Outcome.PLANNED, Outcome.INVALID])),
            max_size=12,
        ),
        max_size=5,
    ),
    st.booleans(),
)
def test_the_counts_a_journal_keeps_are_its_tables(
    tmp_path_factory: pytest.TempPathFactory,
    batches: list[list[tuple[int, Outcome]]],
    then_one_by_one: bool,
) -> None:
    """The journal that made a run's table counts the outcomes of the batches of columns it
    records instead of scanning the table (a dry run's end asks twice), and its planned rows
    per change (the page's transitions): the same counts (and rows recorded) as the table's,
    whether the batches ascend or repeat and reorder rows, and after results recorded one by
    one (a resume's)."""
    run_dir = tmp_path_factory.mktemp("journal")
    with Journal.create(run_dir, {}) as journal:
        for batch in batches:
            journal.record_columns(
                {
                    "row": arrays.integers([row for row, _ in batch]),
                    "conversation_id": arrays.strings([ID_1] * len(batch)),
                    "outcome": arrays.strings([outcome.value for _, outcome in batch]),
                    "error_message": arrays.strings(
                        [None if outcome is Outcome.PLANNED else "bad" for _, outcome in batch]
                    ),
                    "change": arrays.strings(
                        [f'[["status", "{STATUSES[row % 3]}"]]' for row, _ in batch]
                    ),
                }
            )
        if then_one_by_one:
            journal.record([RowResult(5, ID_2, Outcome.UPDATED, difference="status: x")])
        kept = journal.counts(), journal.differences(), journal.recorded()
        planned_changes = journal.planned_changes()
    rows = [row for batch in batches for row, _ in batch]
    if not then_one_by_one and all(a < b for a, b in zip(rows, rows[1:], strict=False)):
        assert planned_changes is not None  # each batch after the last: still counted
    with Journal.open(run_dir) as journal:
        assert kept == (journal.counts(), journal.differences(), journal.recorded())
        assert journal.recorded() == sum(journal.counts().values())
        assert journal.planned_changes() is None  # not the journal that made the table
        if planned_changes is not None:
            with closing(sqlite3.connect(journal.path)) as connection:
                table = dict(
                    connection.execute(
                        "SELECT change, COUNT(*) FROM results WHERE outcome = 'planned' "
                        "GROUP BY change"
                    ).fetchall()
                )
            assert planned_changes == table
