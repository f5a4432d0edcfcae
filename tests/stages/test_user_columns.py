"""What the user brought stays with their rows: the input's own columns in the report, the
invalid rows in the fix-and-rerun file, every invalid row named by --strict, a conflicting
duplicate's twin named."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.sandbox import Sandbox
from pipeline.stages.report_columns import COLUMNS
from tests.helpers import read_report, run_cli, write_csv

#: An input with columns the run does not read: a note with a comma and a quote (CSV quoting
#: on the way out), a ticket number, and one named like a report column.
HEADER = ("conversation_id", "status", "note", "ticket", "outcome")


def user_rows(sandbox: Sandbox, count: int) -> list[dict[str, str]]:
    return [
        {
            "conversation_id": row["id"],
            "status": "archived",
            "note": f'move {number}, "asap"',
            "ticket": f"T-{number}",
            "outcome": f"theirs {number}",
        }
        for number, row in enumerate(
            [row for row in sandbox.rows() if row["status"] != "archived"][:count], start=1
        )
    ]


def carried(line: dict[str, str]) -> tuple[str, str, str]:
    return line["note"], line["ticket"], line["input_outcome"]


def expected(row: dict[str, str]) -> tuple[str, str, str]:
    return row["note"], row["ticket"], row["outcome"]


def test_the_report_keeps_the_users_columns_after_its_own(sandbox: Sandbox, tmp_path: Path) -> None:
    rows = user_rows(sandbox, 5)
    rows.insert(2, {**rows[0], "conversation_id": "not-a-uuid", "ticket": "T-bad"})
    path = write_csv(tmp_path / "in.csv", rows, columns=HEADER)
    result = run_cli(
        "run", path, "--base-url", sandbox.base_url, "--rate", "unlimited",
        "--run-dir", tmp_path / "run", "--quiet", token=sandbox.token,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    with (tmp_path / "run" / "report.csv").open(newline="", encoding="utf-8") as file:
        header = next(csv.reader(file))
    assert header == [*COLUMNS, "note", "ticket", "input_outcome"]
    report = read_report(tmp_path / "run" / "report.csv")
    assert [carried(line) for line in report] == [expected(row) for row in rows]
    assert [line["outcome"] for line in report] == ["updated"] * 2 + ["invalid"] + ["updated"] * 3


def test_the_fix_file_holds_invalid_rows_as_written_with_the_reason(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Invalid rows used to be left out of the fix-and-rerun file: the one file that is
    meant to be fixed and run again."""
    rows = user_rows(sandbox, 3)
    rows[1] = {**rows[1], "status": "Closedd"}
    rows.append({**rows[0], "conversation_id": "{" + rows[0]["conversation_id"], "ticket": "T-9"})
    path = write_csv(tmp_path / "in.csv", rows, columns=HEADER)
    result = run_cli(
        "run", path, "--base-url", sandbox.base_url, "--rate", "unlimited",
        "--run-dir", tmp_path / "run", "--quiet", token=sandbox.token,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    fix = read_report(tmp_path / "run" / "report-failures.csv")
    assert [line["row"] for line in fix] == ["2", "4"]
    assert [line["status"] for line in fix] == ["Closedd", "archived"]
    assert fix[1]["conversation_id"] == rows[3]["conversation_id"]  # as written, brace and all
    assert all(line["outcome"] == "invalid" and line["error_message"] for line in fix)
    assert [carried(line) for line in fix] == [expected(rows[1]), expected(rows[3])]
    assert "to fix and run again" in result.stdout


def test_a_parquet_dry_run_and_a_resumed_run_carry_the_columns_too(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    rows = user_rows(sandbox, 6)
    table = pa.Table.from_pylist(rows)
    table = table.append_column("tags", pa.array([["a"]] * 6))  # a list: not one cell
    pq.write_table(table, tmp_path / "in.parquet")
    dry = run_cli(
        "run", tmp_path / "in.parquet", "--dry-run", "--run-dir", tmp_path / "dry", "--quiet",
        "--report", tmp_path / "dry" / "report.parquet",
    )  # fmt: skip
    assert dry.returncode == 0, dry.stdout + dry.stderr
    report = pq.read_table(tmp_path / "dry" / "report.parquet")
    assert report.column_names == [*COLUMNS, "note", "ticket", "input_outcome"]
    assert report.column("ticket").to_pylist() == [row["ticket"] for row in rows]

    common = ("--base-url", sandbox.base_url, "--rate", "unlimited", "--quiet", "--no-snapshot")
    first = run_cli(
        "run", tmp_path / "in.parquet", *common, "--batch-size", "1", "--max-requests", "2",
        "--run-dir", tmp_path / "run", "--report", tmp_path / "run" / "report.parquet",
        token=sandbox.token,
    )  # fmt: skip
    assert first.returncode == 3, first.stdout + first.stderr
    again = run_cli(
        "resume", tmp_path / "run", "--max-requests", "100", "--quiet", token=sandbox.token
    )
    assert again.returncode == 0, again.stdout + again.stderr
    report = pq.read_table(tmp_path / "run" / "report.parquet")
    assert report.column("outcome").to_pylist() == ["updated"] * 6
    assert report.column("input_outcome").to_pylist() == [row["outcome"] for row in rows]


def test_strict_names_every_invalid_row_and_writes_the_report(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """--strict used to name the first invalid row only and write nothing."""
    rows = user_rows(sandbox, 4)
    rows[0] = {**rows[0], "conversation_id": "x1"}
    rows[3] = {**rows[3], "status": "shut"}
    path = write_csv(tmp_path / "in.csv", rows, columns=HEADER)
    result = run_cli(
        "run", path, "--strict", "--base-url", sandbox.base_url, "--run-dir", tmp_path / "run",
        "--quiet", token=sandbox.token,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert "nothing was sent (--strict)" in result.stderr
    assert "row 1: conversation_id" in result.stderr and "row 4: status" in result.stderr
    assert sandbox.stats()["requests"] == 0
    report = read_report(tmp_path / "run" / "report.csv")
    assert [line["outcome"] for line in report] == ["invalid", "planned", "planned", "invalid"]
    fix = read_report(tmp_path / "run" / "report-failures.csv")
    assert [line["row"] for line in fix] == ["1", "4"]


@pytest.mark.parametrize("copies", [2, 5])
def test_a_conflicting_duplicate_names_its_twins(tmp_path: Path, copies: int) -> None:
    """Each row of a conversation listed with different targets names the other rows, not the
    first row (which, on the first row, named itself)."""
    conversation = "6f1c2a1e-4b7d-4c1e-9a8b-0d2e3f4a5b6c"
    rows = [
        {"conversation_id": conversation, "status": status}
        for status in ("open", "closed", "archived", "open", "closed")[:copies]
    ]
    path = write_csv(tmp_path / "in.csv", rows, columns=("conversation_id", "status"))
    result = run_cli("run", path, "--dry-run", "--run-dir", tmp_path / "run", "--quiet")
    assert result.returncode == 1, result.stdout + result.stderr
    messages = [line["error_message"] for line in read_report(tmp_path / "run" / "report.csv")]
    if copies == 2:
        assert "also listed in row 2 " in messages[0] and "also listed in row 1 " in messages[1]
    else:
        assert "also listed in rows 2, 3, 4 and 1 more" in messages[0]
        assert "also listed in rows 1, 2, 3 and 1 more" in messages[4]


def test_a_column_that_looks_like_a_target_is_not_ignored_silently(tmp_path: Path) -> None:
    """`inbox` for `inbox_id`: the run would change the status only, and said nothing."""
    rows = [
        {"conversation_id": "6f1c2a1e-4b7d-4c1e-9a8b-0d2e3f4a5b6c", "status": "open", "inbox": "9"}
    ]
    path = write_csv(tmp_path / "in.csv", rows, columns=("conversation_id", "status", "inbox"))
    result = run_cli("run", path, "--dry-run", "--run-dir", tmp_path / "run", "--quiet")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "column 'inbox' is not read" in result.stdout
    assert "--map inbox_id=inbox" in result.stdout


@pytest.mark.parametrize("size", [3, 30_000], ids=["small", "past-a-chunk"])
def test_excels_sep_line_names_the_delimiter(tmp_path: Path, size: int) -> None:
    """`sep=;` before the header (Excel's CSV for another locale) used to be read as the header."""
    ids = [f"6f1c2a1e-4b7d-4c1e-9a8b-{number:012x}" for number in range(size)]
    lines = ["sep=;", "conversation_id;status;note", *(f"{each};closed;a, b" for each in ids)]
    lines[3] = f"{ids[1]};shut;x"  # row 2, line 4 of the file
    path = tmp_path / "excel.csv"
    path.write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    result = run_cli("run", path, "--dry-run", "--run-dir", tmp_path / "run", "--quiet")
    assert result.returncode == 1, result.stdout + result.stderr
    report = read_report(tmp_path / "run" / "report.csv")
    assert len(report) == size and report[0]["row"] == "1"
    assert report[0]["target_status"] == "closed" and report[0]["note"] == "a, b"
    assert report[1]["outcome"] == "invalid" and "status" in report[1]["error_message"]
    fix = read_report(tmp_path / "run" / "report-failures.csv")
    assert [(line["row"], line["status"]) for line in fix] == [("2", "shut")]
    # A row of another width is refused naming its line as an editor shows it.
    path.write_text("\r\n".join([*lines, "x;y;z;w"]) + "\r\n", encoding="utf-8")
    wide = run_cli("run", path, "--dry-run", "--run-dir", tmp_path / "again", "--quiet")
    assert wide.returncode == 2 and f"line {len(lines) + 1}" in wide.stderr, wide.stderr


@pytest.mark.parametrize("quoted", [False, True], ids=["plain", "quoted"])
def test_the_fix_file_of_a_file_without_other_columns_holds_cells_as_written(
    tmp_path: Path, quoted: bool
) -> None:
    """Without columns of its own the cells come from the first pass's reader (pyarrow's for a
    plain file, the csv module's for one with quotes): the same cells, as written."""
    good = "6f1c2a1e-4b7d-4c1e-9a8b-0d2e3f4a5b6c"
    rows = [(good, "closed"), ("  NOT-A-UUID ", "open"), (good.upper(), "Closedd")]
    quote = '"' if quoted else ""
    lines = ["conversation_id,status", *(f"{quote}{a}{quote},{b}" for a, b in rows)]
    path = tmp_path / "in.csv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = run_cli("run", path, "--dry-run", "--run-dir", tmp_path / "run", "--quiet")
    assert result.returncode == 1, result.stdout + result.stderr
    fix = read_report(tmp_path / "run" / "report-failures.csv")
    assert [(line["row"], line["conversation_id"], line["status"]) for line in fix] == [
        ("2", "  NOT-A-UUID ", "open"),
        ("3", good.upper(), "Closedd"),
    ]


def test_a_parquet_fix_file_holds_the_invalid_rows_cells(tmp_path: Path) -> None:
    """A Parquet input's failing rows are read a column at a time, the others skipped."""
    good = "6f1c2a1e-4b7d-4c1e-9a8b-0d2e3f4a5b6c"
    rows = [{"conversation_id": good, "status": "closed"}] * 30_000
    rows = [*rows, {"conversation_id": " x-1 ", "status": "Shut"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    result = run_cli("run", tmp_path / "in.parquet", "--dry-run", "--run-dir", tmp_path / "run")
    assert result.returncode == 1, result.stdout + result.stderr
    fix = pq.read_table(tmp_path / "run" / "report-failures.parquet").to_pylist()
    assert [(line["row"], line["conversation_id"], line["status"]) for line in fix] == [
        ("30001", " x-1 ", "Shut")
    ]
