"""Spreadsheets as input through the real CLI: the sample data as .xlsx and .ods end to end and
resumed, cells judged by their types, rows named as the sheet shows them, and bad workbooks
refused with one line."""

from __future__ import annotations

import csv
import datetime
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.sandbox import Sandbox
from tests.helpers import REPO, SAMPLE, read_report, run_cli, write_csv

Cell = Any
PROTECTED = REPO / "tests" / "data" / "spreadsheets"
UUID_1 = "3f1b0a1e-5c2d-4e6f-8a9b-0c1d2e3f4a5b"
UUID_2 = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
INBOX = "6861072c-1e75-4a93-8661-abe05b1b90b4"


def sample_rows() -> list[list[str]]:
    """sample_data/reassign.csv as its cells, header first."""
    with (SAMPLE / "reassign.csv").open(newline="", encoding="utf-8") as file:
        return list(csv.reader(file))


def write_xlsx(
    path: Path,
    rows: Sequence[Sequence[Cell]],
    *,
    sheet: str = "Sheet1",
    before: Sequence[str] = (),
    blank_rows_above: int = 0,
) -> Path:
    """A workbook whose sheet `sheet` holds `rows` (None: an empty cell) below
    `blank_rows_above` empty rows; `before` names empty sheets placed ahead of it."""
    import openpyxl

    workbook = openpyxl.Workbook()
    first = workbook.active
    assert first is not None
    for name in before:
        workbook.create_sheet(name, 0)
    first.title = sheet
    for _ in range(blank_rows_above):
        first.append([])
    for row in rows:
        first.append(list(row))
    workbook.save(path)
    return path


def write_ods(
    path: Path, rows: Sequence[Sequence[Cell]], *, sheet: str = "Rows", before: Sequence[str] = ()
) -> Path:
    """An OpenDocument spreadsheet with the typed cells Calc writes: strings, floats, booleans
    and dates."""
    from odf.opendocument import OpenDocumentSpreadsheet
    from odf.table import Table, TableCell, TableRow
    from odf.text import P

    def cell(value: Cell) -> Any:
        if value is None or value == "":
            return TableCell()
        if isinstance(value, bool):
            made = TableCell(valuetype="boolean", booleanvalue=str(value).lower())
        elif isinstance(value, int | float):
            made = TableCell(valuetype="float", value=value)
        elif isinstance(value, datetime.date):
            made = TableCell(valuetype="date", datevalue=value.isoformat())
        else:
            made = TableCell(valuetype="string")
        made.addElement(P(text=str(value)))
        return made

    document = OpenDocumentSpreadsheet()
    for name in before:
        table = Table(name=name)
        table.addElement(TableRow())
        document.spreadsheet.addElement(table)
    table = Table(name=sheet)
    for row in rows:
        table_row = TableRow()
        for value in row:
            table_row.addElement(cell(value))
        table.addElement(table_row)
    document.spreadsheet.addElement(table)
    document.save(str(path))
    return path


def write_xls(path: Path, rows: Sequence[Sequence[Cell]], *, sheet: str = "Sheet1") -> Path:
    """An Excel 97-2003 workbook (BIFF8), as old exports still are."""
    import xlwt

    workbook = xlwt.Workbook()
    table = workbook.add_sheet(sheet)
    for row_index, row in enumerate(rows):
        for column_index, value in enumerate(row):
            if value is not None:
                table.write(row_index, column_index, value)
    workbook.save(str(path))
    return path


def with_cached_value(path: Path, reference: str, cached: str) -> None:
    """Give the formula in cell `reference` the cached text result Excel would have saved with
    it (openpyxl writes formulas without one)."""
    part = "xl/worksheets/sheet1.xml"
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    xml = members[part].decode()
    pattern = rf'<c r="{reference}"([^>]*)><f>(.*?)</f><v\s*/></c>'
    assert re.search(pattern, xml), xml
    members[part] = re.sub(
        pattern, rf'<c r="{reference}" t="str"><f>\2</f><v>{cached}</v></c>', xml
    ).encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def run_sheet(sandbox: Sandbox, path: Path, run_dir: Path, *flags: str | Path) -> Any:
    return run_cli(
        "run", path, "--base-url", sandbox.base_url, "--rate", "unlimited",
        "--run-dir", run_dir, "--quiet", *flags, token=sandbox.token, timeout=60,
    )  # fmt: skip


def dry_run(path: Path, run_dir: Path, *flags: str | Path) -> Any:
    return run_cli("run", path, "--dry-run", "--run-dir", run_dir, "--quiet", *flags)


def assert_one_clear_line(result: Any, message: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr


def reasons(report: list[dict[str, str]]) -> dict[int, str]:
    return {int(row["row"]): row["error_message"] for row in report if row["outcome"] == "invalid"}


WRITERS = {"xlsx": write_xlsx, "ods": write_ods}


# --- The sample data, end to end ---------------------------------------------------------------


@pytest.mark.parametrize("kind", ["ods", "xls", "xlsx"])
def test_the_sample_data_as_a_workbook_runs_as_its_csv_does(
    sandbox: Sandbox, tmp_path: Path, kind: str
) -> None:
    """reassign.csv saved as .xlsx, .ods or .xls: the same outcomes, reasons and values, row
    for row, each numbered as the sheet shows it (the header is row 1: CSV row n is row n + 1)."""
    from_csv = run_sheet(sandbox, SAMPLE / "reassign.csv", tmp_path / "csv")
    assert from_csv.returncode == 1, from_csv.stderr
    sandbox.reset()
    writer = {**WRITERS, "xls": write_xls}[kind]
    workbook = writer(tmp_path / f"reassign.{kind}", sample_rows())
    from_sheet = run_sheet(sandbox, workbook, tmp_path / kind)
    assert from_sheet.returncode == 1, from_sheet.stderr
    csv_report = read_report(tmp_path / "csv" / "report.csv")
    sheet_report = read_report(tmp_path / kind / "report.csv")
    assert len(sheet_report) == len(csv_report) == 96
    for csv_row, sheet_row in zip(csv_report, sheet_report, strict=True):
        assert int(sheet_row.pop("row")) == int(csv_row.pop("row")) + 1
        # A message naming another row names it as the sheet does too.
        csv_row["error_message"] = re.sub(
            r"row (\d+)", lambda found: f"row {int(found[1]) + 1}", csv_row["error_message"]
        )
        assert sheet_row == csv_row
    assert sum(row["outcome"] == "updated" for row in sheet_report) == 85


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_a_stopped_workbook_run_resumes_on_its_own_sheet(
    sandbox: Sandbox, tmp_path: Path, kind: str
) -> None:
    """Stopped by --max-requests, then `resume`: the run goes on reading the sheet it started
    with (not the workbook's first, which is empty) and ends as an uninterrupted run does."""
    workbook = WRITERS[kind](tmp_path / f"rows.{kind}", sample_rows(), before=["Notes"])
    uninterrupted = run_sheet(sandbox, workbook, tmp_path / "whole", "--sheet", "2")
    assert uninterrupted.returncode == 1, uninterrupted.stderr
    sandbox.reset()
    run_dir = tmp_path / "stopped"
    name = "Sheet1" if kind == "xlsx" else "Rows"
    stopped = run_sheet(
        sandbox, workbook, run_dir, "--sheet", name,
        "--max-requests", "3", "--batch-size", "5", "--concurrency", "1",
    )  # fmt: skip
    assert stopped.returncode == 3, stopped.stderr
    halfway = {row["outcome"] for row in read_report(run_dir / "report.csv")}
    assert {"updated", "skipped"} <= halfway  # stopped with work done and work left
    resumed = run_cli(
        "resume", run_dir, "--max-requests", "1000", "--quiet", token=sandbox.token, timeout=60
    )
    assert resumed.returncode == 1, resumed.stderr
    whole = read_report(tmp_path / "whole" / "report.csv")
    after = read_report(run_dir / "report.csv")
    assert [(row["row"], row["outcome"]) for row in after] == [
        (row["row"], row["outcome"]) for row in whole
    ]


# --- Cells judged as typed ---------------------------------------------------------------------


def test_cells_are_judged_by_their_type_and_rows_named_as_the_sheet_shows_them(
    tmp_path: Path,
) -> None:
    """A number, a date or TRUE where a uuid or a status belongs, an error cell and a cell under
    a merged block make their row invalid with the reason; a formula's cached value is read;
    a hidden row is held back; dates in a column that is not read are fine."""
    import openpyxl

    path = tmp_path / "typed.xlsx"
    rows = [
        ["conversation_id", "inbox_id", "status", "when"],
        [UUID_1, INBOX, "closed", datetime.date(2025, 3, 1)],  # row 3: valid
        [1234567, INBOX, "closed", None],  # row 4
        [UUID_2, datetime.date(2025, 3, 1), "open", None],  # row 5
        [UUID_1.replace("3f", "4f"), None, True, None],  # row 6
        [UUID_2.replace("9a", "8a"), "#N/A", "closed", None],  # row 7: an error cell
        [UUID_1.replace("3f", "5f"), None, '=LOWER("CLOSED")', None],  # row 8: a formula
        [UUID_1.replace("3f", "6f"), None, "archived", None],  # row 9: merged with row 10
        [UUID_1.replace("3f", "7f"), None, None, None],  # row 10
        [UUID_1.replace("3f", "8f"), None, "open", None],  # row 11: hidden
        [UUID_1.replace("3f", "9f"), None, 2.5, None],  # row 12
    ]
    write_xlsx(path, rows, blank_rows_above=1)
    workbook = openpyxl.load_workbook(path)
    sheet = workbook.active
    assert sheet is not None
    sheet["B7"].data_type = "e"  # an error cell, as a failed lookup leaves it
    sheet.merge_cells("C9:C10")
    sheet.row_dimensions[11].hidden = True
    workbook.save(path)
    with_cached_value(path, "C8", "closed")

    result = dry_run(path, tmp_path / "run")
    assert result.returncode == 1, result.stderr
    report = read_report(tmp_path / "run" / "report.csv")
    assert [int(row["row"]) for row in report] == list(range(3, 13))
    assert reasons(report) == {
        4: "conversation_id is 1234567: a number, not a uuid — was the column reformatted?",
        5: "inbox_id is 2025-03-01: a date, not a uuid — was the column reformatted?",
        6: "status is TRUE: TRUE/FALSE, not a status — was the column reformatted?",
        7: "inbox_id is an error cell (#N/A): fix the formula or clear the cell",
        10: "status is in a merged cell whose value belongs to row 9: unmerge it and fill in "
        "each row",
        11: "the row is hidden in the spreadsheet: unhide it to change it",
        12: "status is 2.5: a number, not a status — was the column reformatted?",
    }
    by_row = {int(row["row"]): row for row in report}
    assert by_row[8]["outcome"] == "planned" and by_row[8]["target_status"] == "closed"
    assert by_row[9]["target_status"] == "archived"

    strict = dry_run(path, tmp_path / "strict", "--strict")
    assert strict.returncode == 2 and "Traceback" not in strict.stderr, strict.stderr
    assert "(first: Sheet1, row 4: conversation_id is 1234567: a number" in strict.stderr
    # --strict names every invalid row, as the sheet numbers it.
    assert "  Sheet1, row 4: conversation_id is 1234567" in strict.stderr
    assert "  Sheet1, row 11: the row is hidden" in strict.stderr


def test_an_ods_cell_is_judged_by_its_type_too(tmp_path: Path) -> None:
    """In an .ods a number id, a date inbox and an error's text are invalid; text cells are
    read as written, and a typed problem comes first among a row's reasons."""
    path = write_ods(
        tmp_path / "typed.ods",
        [
            ["conversation_id", "inbox_id", "status"],
            [UUID_1, INBOX, " Closed "],
            [98765, None, "open"],
            [UUID_2, datetime.date(2025, 1, 2), "bogus"],
            [UUID_1.replace("3f", "4f"), "#DIV/0!", None],
        ],
    )
    result = dry_run(path, tmp_path / "run")
    assert result.returncode == 1, result.stderr
    report = read_report(tmp_path / "run" / "report.csv")
    assert reasons(report) == {
        3: "conversation_id is 98765: a number, not a uuid — was the column reformatted?",
        4: "inbox_id is 2025-01-02: a date, not a uuid — was the column reformatted?; "
        "status must be one of open, closed, archived, not 'bogus'",
        5: "inbox_id is an error cell (#DIV/0!): fix the formula or clear the cell",
    }
    assert report[0]["row"] == "2" and report[0]["target_status"] == "closed"


def test_ods_error_cells_hidden_rows_and_merged_cells_are_invalid(tmp_path: Path) -> None:
    """What calamine reads as empty or as an ordinary row in an .ods, found in the file: a
    failed formula (saved as Calc saves it, an empty string value), a hidden row, a cell under
    a merged block; the header below an empty first row is row 2."""
    from odf.opendocument import OpenDocumentSpreadsheet
    from odf.table import CoveredTableCell, Table, TableCell, TableRow
    from odf.text import P

    def text_cell(value: str, **attributes: Any) -> Any:
        cell = TableCell(valuetype="string", **attributes)
        cell.addElement(P(text=value))
        return cell

    def row(*cells: Any, **attributes: Any) -> Any:
        made = TableRow(**attributes)
        for cell in cells:
            made.addElement(cell)
        return made

    failed = TableCell(formula="of:=1/0", valuetype="string", stringvalue="")
    failed.addElement(P(text="#DIV/0!"))
    document = OpenDocumentSpreadsheet()
    table = Table(name="Rows")
    for each in (
        row(TableCell()),  # row 1: empty
        row(text_cell("conversation_id"), text_cell("status")),  # row 2: the header
        row(text_cell(UUID_1), failed),  # row 3
        row(text_cell(UUID_2), text_cell("open"), visibility="collapse"),  # row 4
        row(text_cell(UUID_1.replace("3f", "4f")), text_cell("closed", numberrowsspanned=2)),
        row(text_cell(UUID_1.replace("3f", "5f")), CoveredTableCell()),  # row 6
        row(text_cell(UUID_1.replace("3f", "6f")), text_cell("archived")),  # row 7
    ):
        table.addElement(each)
    document.spreadsheet.addElement(table)
    path = tmp_path / "marked.ods"
    document.save(str(path))

    result = dry_run(path, tmp_path / "run")
    assert result.returncode == 1, result.stderr
    report = read_report(tmp_path / "run" / "report.csv")
    assert [row["row"] for row in report] == ["3", "4", "5", "6", "7"]
    assert reasons(report) == {
        3: "status is an error cell (#DIV/0!): fix the formula or clear the cell",
        4: "the row is hidden in the spreadsheet: unhide it to change it",
        6: "status is in a merged cell whose value belongs to row 5: unmerge it and fill in "
        "each row",
    }


def test_an_xls_number_id_and_merged_status_are_invalid(tmp_path: Path) -> None:
    """In an .xls too: a number id is invalid with the typed reason, and the rows under a
    merged status cell are invalid rather than left unchanged."""
    import xlwt

    path = tmp_path / "old.xls"
    workbook = xlwt.Workbook()
    table = workbook.add_sheet("Sheet1")
    for row_index, row in enumerate(
        [["conversation_id", "status"], [UUID_1, "closed"], [4711, "open"], [UUID_2, None]]
    ):
        for column_index, value in enumerate(row):
            if value is not None:
                table.write(row_index, column_index, value)
    table.write_merge(4, 5, 1, 1, "archived")  # rows 5 and 6 of the sheet
    table.write(4, 0, UUID_1.replace("3f", "4f"))
    table.write(5, 0, UUID_1.replace("3f", "5f"))
    workbook.save(str(path))
    result = dry_run(path, tmp_path / "run")
    assert result.returncode == 1, result.stderr
    report = read_report(tmp_path / "run" / "report.csv")
    assert reasons(report) == {
        3: "conversation_id is 4711: a number, not a uuid — was the column reformatted?",
        4: "nothing to change",
        6: "status is in a merged cell whose value belongs to row 5: unmerge it and fill in "
        "each row",
    }
    assert {row["row"]: row["target_status"] for row in report}["5"] == "archived"


# --- Sheets, and files refused as a whole -------------------------------------------------------


def test_sheet_picked_by_name_or_number_and_an_unknown_one_names_those_there_are(
    tmp_path: Path,
) -> None:
    """--sheet NAME and --sheet N (from 1) read that sheet; an unknown name or number is exit 2
    naming the workbook's sheets."""
    path = write_xlsx(
        tmp_path / "book.xlsx", [["conversation_id", "status"], [UUID_1, "closed"]],
        sheet="Rows", before=["Read me"],
    )  # fmt: skip
    for sheet in ("Rows", "rows", "2"):
        result = dry_run(path, tmp_path / f"run-{sheet}", "--sheet", sheet)
        assert result.returncode == 0, result.stderr
        assert [row["row"] for row in read_report(tmp_path / f"run-{sheet}" / "report.csv")] == [
            "2"
        ]
    assert_one_clear_line(
        dry_run(path, tmp_path / "x", "--sheet", "Data"),
        "book.xlsx has no sheet 'Data'; its sheets are 'Read me', 'Rows'",
    )
    assert_one_clear_line(
        dry_run(path, tmp_path / "x", "--sheet", "3"),
        "--sheet 3: " + str(path) + " has 2 sheets (numbered from 1): 'Read me', 'Rows'",
    )
    assert_one_clear_line(
        dry_run(path, tmp_path / "x"),
        "sheet 'Read me' is empty; it needs a header row such as conversation_id, status and at "
        "least one row below it; pick another with --sheet: 'Rows'",
    )
    assert not (tmp_path / "x").exists()


def make_bad(kind: str, tmp_path: Path) -> Path:
    """The spreadsheet cases of the bad-input corpus, made on demand."""
    import openpyxl

    header = ["conversation_id", "status"]
    if kind == "header_only":
        return write_xlsx(tmp_path / "header.xlsx", [header])
    if kind == "blank_rows_only":
        return write_xlsx(tmp_path / "blank.xlsx", [header, [None, None], ["  ", None]])
    if kind == "merged_title":
        path = write_xlsx(tmp_path / "title.xlsx", [["Q3 clean-up"], header, [UUID_1, "closed"]])
        workbook = openpyxl.load_workbook(path)
        assert workbook.active is not None
        workbook.active.merge_cells("A1:B1")
        workbook.save(path)
        return path
    if kind == "truncated":
        whole = write_xlsx(tmp_path / "whole.xlsx", [header, [UUID_1, "closed"]]).read_bytes()
        path = tmp_path / "cut.xlsx"
        path.write_bytes(whole[: len(whole) // 2])
        return path
    if kind in ("encrypted", "encrypted_named_xls"):
        # Saved with a password, as Excel does: an OLE compound file holding the encrypted zip.
        path = tmp_path / ("locked.xlsx" if kind == "encrypted" else "locked.xls")
        path.write_bytes((PROTECTED / "password_protected.xlsx").read_bytes())
        return path
    if kind == "empty_file":
        path = tmp_path / "zero.ods"
        path.write_bytes(b"")
        return path
    if kind == "not_a_workbook":
        return write_csv(tmp_path / "text.ods", [{"conversation_id": UUID_1}])
    if kind == "xlsx_named_csv":
        path = tmp_path / "export.csv"
        path.write_bytes(write_xlsx(tmp_path / "real.xlsx", [header]).read_bytes())
        return path
    if kind == "ods_named_csv":
        path = tmp_path / "export.csv"
        path.write_bytes(write_ods(tmp_path / "real.ods", [header]).read_bytes())
        return path
    raise AssertionError(kind)


REFUSED = {
    "header_only": "sheet 'Sheet1' has a header (row 1) but no rows below it",
    "blank_rows_only": "sheet 'Sheet1' has a header (row 1) but no rows below it",
    "merged_title": "sheet 'Sheet1' (header in row 1) has no conversation_id (or id) column; "
    "its columns are 'Q3 clean-up', ''",
    "truncated": "is not a readable .xlsx workbook",
    "encrypted": "locked.xlsx is password-protected (encrypted); save a copy without the password",
    "encrypted_named_xls": "locked.xls is password-protected (encrypted)",
    "empty_file": "zero.ods is empty",
    "not_a_workbook": "is not a readable .ods workbook",
    "xlsx_named_csv": "rename it to .xlsx and pass it as it is (--sheet NAME picks a sheet)",
    "ods_named_csv": "is an OpenDocument spreadsheet, not a CSV file; rename it to .ods",
}


@pytest.mark.parametrize("kind", sorted(REFUSED))
def test_a_bad_workbook_exits_2_with_one_line_and_sends_nothing(
    sandbox: Sandbox, tmp_path: Path, kind: str
) -> None:
    """Each bad workbook: exit 2, one stderr line saying what is wrong, no traceback, no
    request, no run directory."""
    result = run_sheet(sandbox, make_bad(kind, tmp_path), tmp_path / "run")
    assert_one_clear_line(result, REFUSED[kind])
    assert sandbox.stats()["requests"] == 0
    assert not (tmp_path / "run").exists()


def test_sheet_and_delimiter_are_refused_where_they_mean_nothing(tmp_path: Path) -> None:
    """--sheet on a CSV file and --delimiter on a workbook: exit 2, one line."""
    csv_path = write_csv(tmp_path / "rows.csv", [{"conversation_id": UUID_1, "status": "open"}])
    assert_one_clear_line(
        dry_run(csv_path, tmp_path / "a", "--sheet", "1"),
        "--sheet: " + str(csv_path) + " is not a spreadsheet",
    )
    book = write_xlsx(tmp_path / "rows.xlsx", [["conversation_id", "status"], [UUID_1, "open"]])
    assert_one_clear_line(
        dry_run(book, tmp_path / "b", "--delimiter", ";"),
        "--delimiter: " + str(book) + " is a spreadsheet, not CSV",
    )


# --- Job files -----------------------------------------------------------------------------------


def test_a_job_file_reads_the_sheet_it_names(tmp_path: Path) -> None:
    """`file = "rows.xlsx"` with `sheet = "Rows"` reads that sheet; `sheet = 0` is refused naming
    the key's line."""
    write_xlsx(
        tmp_path / "rows.xlsx",
        [["conversation_id", "status"], [UUID_1, "closed"], [UUID_2, "open"]],
        sheet="Rows", before=["Summary"],
    )  # fmt: skip
    job = tmp_path / "close.toml"
    job.write_text(
        '[source]\nfile = "rows.xlsx"\nsheet = "Rows"\n\n'
        '[output]\ndry_run = true\nrun_dir = "run"\nreport = "report.csv"\n',
        encoding="utf-8",
    )
    result = run_cli("job", job, "--quiet", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = read_report(tmp_path / "report.csv")
    assert [(row["row"], row["target_status"]) for row in report] == [
        ("2", "closed"),
        ("3", "open"),
    ]
    job.write_text('[source]\nfile = "rows.xlsx"\nsheet = 0\n', encoding="utf-8")
    assert_one_clear_line(
        run_cli("job", job, "--check", cwd=tmp_path),
        "close.toml, line 3: source.sheet: sheets are numbered from 1",
    )


# --- verify --------------------------------------------------------------------------------------


def test_verify_reads_a_sheet_and_judges_its_cells_by_type(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """`verify --sheet`: a row at its target is at_target, and a status typed TRUE is invalid
    with the typed reason, not read as "leave unchanged" and called at_target."""
    first, second = sandbox.rows()[:2]
    path = write_xlsx(
        tmp_path / "check.xlsx",
        [
            ["conversation_id", "inbox_id", "status"],
            [first["id"], None, first["status"]],
            [second["id"], second["inbox_id"], True],
        ],
        sheet="Check", before=["Cover"],
    )  # fmt: skip
    report = tmp_path / "verify.csv"
    result = run_cli(
        "verify", path, "--sheet", "Check", "--report", report,
        "--base-url", sandbox.base_url, "--rate", "unlimited", "--quiet", token=sandbox.token,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    rows = read_report(report)
    assert [(row["row"], row["state"]) for row in rows] == [("2", "at_target"), ("3", "invalid")]
    assert (
        rows[1]["detail"]
        == "status is TRUE: TRUE/FALSE, not a status — was the column reformatted?"
    )


# --- Typed cells, whatever they are ---------------------------------------------------------------

typed_cells = st.one_of(
    st.uuids().map(str),
    st.integers(min_value=-(10**15), max_value=10**15),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.booleans(),
    st.dates(min_value=datetime.date(1901, 1, 1), max_value=datetime.date(2999, 12, 31)),
)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(typed_cells, typed_cells), min_size=1, max_size=8))
def test_only_text_cells_are_read_as_values(tmp_path_factory: Any, rows: list[Any]) -> None:
    """Whatever mix of numbers, dates, TRUE/FALSE and uuid text an id and an inbox column hold,
    a row is valid exactly when both are uuid text, and is then sent with those uuids; any
    other cell makes the row invalid naming its column, and no value of it is sent."""
    from pipeline.stages.input.opening import open_input
    from pipeline.stages.validate import validate_batch

    path = tmp_path_factory.mktemp("typed") / "typed.xlsx"
    write_xlsx(path, [["conversation_id", "inbox_id"], *rows])
    with open_input(path) as input_file:
        checked = [
            row
            for batch in input_file.batches(chunk_rows=3)
            for row in validate_batch(batch, {}).to_pylist()
        ]
    assert [row["row"] for row in checked] == list(range(2, len(rows) + 2))
    for (identifier, inbox), row in zip(rows, checked, strict=True):
        typed = [
            name
            for name, cell in (("conversation_id", identifier), ("inbox_id", inbox))
            if not isinstance(cell, str)
        ]
        if not typed:
            assert row["reason"] is None
            assert (row["conversation_id"], row["inbox_id"]) == (identifier, inbox)
            continue
        assert row["inbox_id"] is None
        assert row["reason"].startswith(f"{typed[0]} is ")
        assert all(f"{name} is " in row["reason"] for name in typed)
        assert "was the column reformatted?" in row["reason"]
