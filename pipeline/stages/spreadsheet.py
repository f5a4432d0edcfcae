"""Spreadsheets as input: one sheet of an .xlsx, .xlsm, .xls or .ods workbook, read with
python-calamine, which never runs macros and never recalculates: a formula's cached value is read.

A sheet is read as a table: its header is its first row that is not empty, every row below it is
a data row, and rows are numbered as the spreadsheet shows them, so the report's row 5 is the
row labelled 5 ("Sheet1, row 5" in messages). Empty rows are skipped but keep their numbers.

Cells keep their types until they are turned into the text the validate stage reads. A cell whose
type cannot be what its column asks for makes its row invalid with a reason instead of being sent
as text: a number where a uuid belongs is what Excel leaves after a column was reformatted, and
its digits must never pass for anything. The same goes for dates, TRUE/FALSE, error cells (#N/A),
cells inside a merged block below its first row, and hidden rows: what the user could not see in
a row is not sent. calamine reads an error cell as an empty one and knows no hidden rows, so
those are looked for in the .xlsx/.xlsm/.ods file itself; an .xls is not looked into (an error
cell there reads as empty, a hidden row as any other).

The workbook's cells are held by calamine, in native memory, while a sheet is read; rows become
Python objects one chunk at a time. A sheet is read again for each pass over it, as a CSV file is.
"""

from __future__ import annotations

import datetime
import re
import zipfile
from collections.abc import Iterator, Mapping, Sequence, Set
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree

from pipeline.core import arrays
from pipeline.core.errors import InputError
from pipeline.core.models import FIELDS
from pipeline.stages.reader import (
    DEFAULT_CHUNK_ROWS,
    EXPECT_FIELDS,
    ID_FIELD,
    InputFile,
    RowBatch,
    _first_line,
    _open_binary,
    _resolve_columns,
)

if TYPE_CHECKING:
    import pyarrow
    from python_calamine import CalamineSheet, CalamineWorkbook

SPREADSHEET_SUFFIXES = frozenset({".xlsx", ".xlsm", ".xls", ".ods"})
#: What Excel and LibreOffice show in a cell whose formula failed. calamine reads such a cell as
#: an empty one, so they are found in the file itself (.xlsx, .xlsm) or by their text.
ERROR_CODES = frozenset(
    {
        "#N/A",
        "#DIV/0!",
        "#VALUE!",
        "#REF!",
        "#NAME?",
        "#NUM!",
        "#NULL!",
        "#SPILL!",
        "#CALC!",
        "#GETTING_DATA",
        "Err:502",
        "Err:504",
        "Err:522",
    }
)
_UUID_FIELDS = frozenset({"conversation_id", "inbox_id", "assignee_id"})
_CFB = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ZIP = b"PK\x03\x04"
_CELL_REFERENCE = re.compile(r"([A-Z]+)([0-9]+)")
_MAIN = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
_RELATIONSHIPS = "{http://schemas.openxmlformats.org/package/2006/relationships}"
_OFFICE_RELATIONSHIP = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}id"
_SCAN_BLOCK = 1024 * 1024


@dataclass
class _Marks:
    """What calamine does not tell about a sheet, found in the file itself: its error cells
    ((row, column) -> code; rows from 1, columns from 0), its hidden rows, and (.ods) the cells
    of merged blocks below their first row (-> the row holding the value)."""

    errors: dict[tuple[int, int], str] = field(default_factory=dict)
    hidden: set[int] = field(default_factory=set)
    #: Hidden rows by the thousand (an .ods file repeats one row element for a run of rows).
    hidden_ranges: list[range] = field(default_factory=list)
    merged: dict[tuple[int, int], int] = field(default_factory=dict)

    def is_hidden(self, row: int) -> bool:
        return row in self.hidden or any(row in each for each in self.hidden_ranges)


class SpreadsheetInput(InputFile):
    """One sheet of a workbook whose header passed the file-level checks; `batches()` streams
    its rows, numbered as the spreadsheet shows them."""

    def __init__(
        self,
        path: Path,
        *,
        name: str,
        sheet: str,
        header_row: int,
        first_column: int,
        header: Sequence[str],
        indexes: Mapping[str, int],
    ) -> None:
        super().__init__(
            path,
            name=name,
            format="spreadsheet",
            header=header,
            indexes=indexes,
            delimiter=None,
        )
        #: The sheet's name as the workbook spells it.
        self.sheet = sheet
        #: The row the header is in, as the spreadsheet numbers it.
        self.header_row = header_row
        self._first_column = first_column

    def __repr__(self) -> str:
        return f"<SpreadsheetInput {self.name!r} sheet={self.sheet!r} columns={self.columns}>"

    def describe_row(self, row: int) -> str:
        return f"{self.sheet}, row {row}"

    def cells(
        self,
        positions: Sequence[int],
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        only: Set[int] | None = None,
    ) -> Iterator[tuple[pyarrow.Array, list[pyarrow.Array]]]:
        """The cells of the columns at `positions` as the sheet shows them (a number as
        12345, a date in ISO 8601), numbered as `batches()` numbers the rows; of the rows in
        `only`, when given."""
        with _workbook(self.path, self.name) as workbook:
            sheet = _sheet(workbook, self.sheet, self.name)
            numbers: list[int] = []
            texts: list[list[str]] = [[] for _ in positions]
            for number, cells in _rows(sheet, self.name):
                if number <= self.header_row or (only is not None and number not in only):
                    continue
                numbers.append(number)
                for column, at in zip(texts, positions, strict=True):
                    column.append(_text(cells[at]) if at < len(cells) else "")
                if len(numbers) == chunk_rows:
                    yield arrays.integers(numbers), [arrays.strings(each) for each in texts]
                    numbers, texts = [], [[] for _ in positions]
            if numbers:
                yield arrays.integers(numbers), [arrays.strings(each) for each in texts]

    def batches(self, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[RowBatch]:
        if chunk_rows < 1:
            raise ValueError("chunk_rows must be at least 1")
        return self._batches(chunk_rows)

    def _batches(self, chunk_rows: int) -> Iterator[RowBatch]:
        with _workbook(self.path, self.name) as workbook:
            sheet = _sheet(workbook, self.sheet, self.name)
            marks = self._marks()
            fields = list(self._indexes.items())
            read = {self._first_column + index for _, index in fields}
            merged = {**marks.merged, **_merged_followers(sheet, self.header_row, read)}
            rows = _rows(sheet, self.name)
            numbers: list[int] = []
            columns: dict[str, list[str]] = {each: [] for each, _ in fields}
            problems: list[str | None] = []
            for number, cells in rows:
                if number <= self.header_row:
                    continue
                row_problems: list[str] = []
                texts: list[str] = []
                for field_name, index in fields:
                    value = cells[index] if index < len(cells) else ""
                    column = self._first_column + index
                    error = marks.errors.get((number, column))
                    if error is None and isinstance(value, str) and value.strip() in ERROR_CODES:
                        error = value.strip()
                    if error is not None:
                        row_problems.append(
                            f"{field_name} is an error cell ({error}): fix the formula or clear "
                            "the cell"
                        )
                        texts.append("")
                        continue
                    first = merged.get((number, column))
                    if first is not None:
                        row_problems.append(
                            f"{field_name} is in a merged cell whose value belongs to row "
                            f"{first}: unmerge it and fill in each row"
                        )
                        texts.append("")
                        continue
                    text, problem = _cell_text(field_name, value)
                    if problem is not None:
                        row_problems.append(problem)
                    texts.append(text)
                if not row_problems and _is_blank(cells):
                    continue  # an empty row asks for nothing; later rows keep their numbers
                if marks.is_hidden(number):
                    # Hidden rows are usually filtered out on purpose: sending what the user
                    # could not see would be a surprise, so the row waits until it is shown.
                    row_problems.insert(
                        0, "the row is hidden in the spreadsheet: unhide it to change it"
                    )
                numbers.append(number)
                for (field_name, _), text in zip(fields, texts, strict=True):
                    columns[field_name].append(text)
                problems.append("; ".join(row_problems) if row_problems else None)
                if len(numbers) == chunk_rows:
                    yield _batch(numbers, columns, problems)
                    numbers, problems = [], []
                    columns = {each: [] for each, _ in fields}
            if numbers:
                yield _batch(numbers, columns, problems)

    def _marks(self) -> _Marks:
        suffix = self.path.suffix.lower()
        try:
            if suffix in {".xlsx", ".xlsm"}:
                return _xlsx_marks(self.path, self.sheet)
            if suffix == ".ods":
                return _ods_marks(self.path, self.sheet)
            return _Marks()
        except (zipfile.BadZipFile, KeyError, ElementTree.ParseError, OSError, ValueError) as error:
            raise InputError(
                f"{self.name}: cannot read sheet {self.sheet!r} ({_first_line(error)}); the file "
                "may be damaged: save or copy it again"
            ) from None


def open_spreadsheet(
    path: Path,
    name: str,
    column_map: Mapping[str, str],
    sheet: str | int | None,
) -> SpreadsheetInput:
    """Check one sheet of a workbook as a whole: the file opens, the sheet exists, it has a
    header with a conversation_id column and at least one row. InputError otherwise."""
    suffix = path.suffix.lower()
    with _open_binary(path, name) as file:
        head = file.read(8)
    if not head:
        raise InputError(f"{name} is empty; save the workbook again")
    if head.startswith(_CFB) and suffix in {".xlsx", ".xlsm"}:
        # Excel keeps an encrypted .xlsx inside an OLE container, the format of an old .xls.
        raise _password_error(name)
    with _workbook(path, name) as workbook:
        sheet_name = _pick_sheet(workbook.sheet_names, sheet, name)
        found = _sheet(workbook, sheet_name, name)
        where = f"{name}, sheet {sheet_name!r}"
        header: list[str] | None = None
        header_row = 0
        for number, cells in _rows(found, name):
            if header is None:
                if not _is_blank(cells):
                    header, header_row = [_text(cell) for cell in cells], number
                continue
            if not _is_blank(cells):
                break
        else:
            if header is None:
                raise InputError(
                    f"{where} is empty; it needs a header row such as conversation_id, status and "
                    f"at least one row below it{_other_sheets(workbook.sheet_names, sheet_name)}"
                )
            raise InputError(f"{where} has a header (row {header_row}) but no rows below it")
        start = found.start
        first_column = start[1] if start else 0
    indexes = _resolve_columns(header, column_map, f"{where} (header in row {header_row})")
    return SpreadsheetInput(
        path,
        name=name,
        sheet=sheet_name,
        header_row=header_row,
        first_column=first_column,
        header=header,
        indexes=indexes,
    )


def _pick_sheet(names: Sequence[str], sheet: str | int | None, name: str) -> str:
    """The sheet `--sheet` names: a name as written, else a number counted from 1."""
    if not names:
        raise InputError(f"{name} has no sheets; save the workbook again")
    if sheet is None:
        return names[0]
    if isinstance(sheet, str):
        if sheet in names:
            return sheet
        folded = [each for each in names if each.strip().casefold() == sheet.strip().casefold()]
        if len(folded) == 1:
            return folded[0]
        if not sheet.strip().isdigit():
            raise InputError(f"{name} has no sheet {sheet!r}; its sheets are {_list_sheets(names)}")
        sheet = int(sheet)
    if not 1 <= sheet <= len(names):
        raise InputError(
            f"--sheet {sheet}: {name} has {len(names)} sheet{'s' if len(names) > 1 else ''} "
            f"(numbered from 1): {_list_sheets(names)}"
        )
    return names[sheet - 1]


def _list_sheets(names: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(repr(each) for each in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _other_sheets(names: Sequence[str], chosen: str) -> str:
    others = [each for each in names if each != chosen]
    return f"; pick another with --sheet: {_list_sheets(others)}" if others else ""


@contextmanager
def _workbook(path: Path, name: str) -> Iterator[CalamineWorkbook]:
    import python_calamine

    try:
        workbook = python_calamine.CalamineWorkbook.from_path(str(path))
    except python_calamine.PasswordError:
        raise _password_error(name) from None
    except (python_calamine.CalamineError, OSError, ValueError) as error:
        raise _damaged_error(path, name, error) from None
    with workbook:
        yield workbook


def _sheet(workbook: CalamineWorkbook, sheet_name: str, name: str) -> CalamineSheet:
    import python_calamine

    try:
        return workbook.get_sheet_by_name(sheet_name)
    except python_calamine.PasswordError:
        raise _password_error(name) from None
    except (python_calamine.CalamineError, ValueError) as error:
        raise InputError(
            f"{name}: cannot read sheet {sheet_name!r} ({_first_line(error)}); the file may be "
            "damaged: save or copy it again"
        ) from None


def _rows(sheet: CalamineSheet, name: str) -> Iterator[tuple[int, list[Any]]]:
    """(row number as the spreadsheet shows it, cells) for every row of the sheet from its top:
    calamine hands out rows from the sheet's first row and cells from its first used column."""
    import python_calamine

    try:
        for index, cells in enumerate(sheet.iter_rows()):
            yield index + 1, cells
    except (python_calamine.CalamineError, ValueError) as error:
        raise InputError(
            f"{name}, sheet {sheet.name!r}: cannot read its rows ({_first_line(error)}); the "
            "file may be damaged: save or copy it again"
        ) from None


def _password_error(name: str) -> InputError:
    return InputError(
        f"{name} is password-protected (encrypted); save a copy without the password "
        "(Excel: File > Info > Protect Workbook) and pass that"
    )


def _damaged_error(path: Path, name: str, error: BaseException) -> InputError:
    if _encrypted_package(path) or (path.suffix.lower() == ".ods" and _encrypted_ods(path)):
        return _password_error(name)
    kind = path.suffix.lower() or "spreadsheet"
    return InputError(
        f"{name} is not a readable {kind} workbook ({_first_line(error)}); it may be damaged "
        "or incomplete (a cut-off download or copy?): save or copy it again"
    )


#: The name of the stream an encrypted Office document keeps its key data in (UTF-16, as OLE
#: directory entries spell names).
_ENCRYPTION_INFO = "EncryptionInfo".encode("utf-16-le")


def _encrypted_package(path: Path) -> bool:
    """An OLE compound file holding an encrypted Office document (whatever its suffix says)."""
    try:
        with path.open("rb") as file:
            if file.read(8) != _CFB:
                return False
            tail = b""
            while block := file.read(_SCAN_BLOCK):
                if _ENCRYPTION_INFO in tail + block:
                    return True
                tail = block[-len(_ENCRYPTION_INFO) :]
    except OSError:
        return False
    return False


def _encrypted_ods(path: Path) -> bool:
    """An OpenDocument file saved with a password lists how its parts are encrypted."""
    try:
        with zipfile.ZipFile(path) as archive:
            return b"encryption-data" in archive.read("META-INF/manifest.xml")
    except (zipfile.BadZipFile, KeyError, OSError):
        return False


def _is_blank(cells: Sequence[Any]) -> bool:
    return all(isinstance(cell, str) and not cell.strip() for cell in cells)


def _text(value: Any) -> str:
    """A cell as the text a header or a message shows: 12345 rather than 12345.0."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e16:
        return str(int(value))
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()
    return str(value)


def _cell_text(field_name: str, value: Any) -> tuple[str, str | None]:
    """The text the validate stage reads for a cell, and why its type makes the row invalid."""
    if isinstance(value, str):
        return value, None
    if isinstance(value, bool):
        kind = "TRUE/FALSE"
    elif isinstance(value, int | float):
        kind = "a number"
    elif isinstance(value, datetime.datetime | datetime.date):
        kind = "a date"
    else:  # datetime.time, datetime.timedelta
        kind = "a time"
    base = field_name.removeprefix("expect_")
    wanted = "a uuid" if base in _UUID_FIELDS else "a status"
    # The cell's text goes on empty: the reason says everything, and no digit string may
    # stand in for an id.
    return "", (
        f"{field_name} is {_text(value)}: {kind}, not {wanted} — was the column reformatted?"
    )


def _batch(
    numbers: list[int], columns: dict[str, list[str]], problems: list[str | None]
) -> RowBatch:
    def column(field_name: str) -> Any:
        values = columns.get(field_name)
        return None if values is None else arrays.strings(values)

    return RowBatch(
        arrays.integers(numbers),
        arrays.strings(columns[ID_FIELD]),
        tuple(column(each) for each in FIELDS),
        tuple(column(each) for each in EXPECT_FIELDS),
        problems=arrays.strings(problems) if any(problems) else None,
    )


def _merged_followers(
    sheet: CalamineSheet, header_row: int, columns: set[int]
) -> dict[tuple[int, int], int]:
    """(row, column) -> the row holding the value, for the cells of a merged block below its
    first row in the data rows of the columns read: calamine reads them as empty, which would
    quietly mean "leave unchanged". (.xlsx, .xlsm and .xls: calamine gives no blocks of .ods.)"""
    followers: dict[tuple[int, int], int] = {}
    end = sheet.end
    last_row = end[0] + 1 if end else 0
    for (top, left), (bottom, right) in sheet.merged_cell_ranges or ():
        first = top + 1
        for column in columns.intersection(range(left, right + 1)):
            for row in range(max(first + 1, header_row + 1), min(bottom + 1, last_row) + 1):
                followers[(row, column)] = first
    return followers


def _xlsx_marks(path: Path, sheet_name: str) -> _Marks:
    """The error cells and hidden rows of one sheet of an .xlsx/.xlsm file. Its XML is parsed
    only when it holds one of them: a quick byte search first, as most sheets have neither."""
    with zipfile.ZipFile(path) as archive:
        part = _sheet_part(archive, sheet_name)
        if part is None:
            return _Marks()
        found = False
        tail = b""
        with archive.open(part) as stream:
            while block := stream.read(_SCAN_BLOCK):
                text = tail + block
                if b't="e"' in text or b'hidden="1"' in text or b'hidden="true"' in text:
                    found = True
                    break
                tail = text[-16:]
        if not found:
            return _Marks()
        marks = _Marks()
        with archive.open(part) as stream:
            for event, element in ElementTree.iterparse(stream, events=("start", "end")):
                if event == "start" and element.tag == f"{_MAIN}row":
                    if element.get("hidden") in ("1", "true") and element.get("r"):
                        marks.hidden.add(int(element.get("r", "0")))
                elif event == "end" and element.tag == f"{_MAIN}c":
                    if element.get("t") == "e":
                        cell = _CELL_REFERENCE.fullmatch(element.get("r", ""))
                        value = element.find(f"{_MAIN}v")
                        if cell is not None:
                            code = (value.text or "") if value is not None else ""
                            marks.errors[(int(cell[2]), _column_index(cell[1]))] = code or "#N/A"
                    element.clear()
                elif event == "end" and element.tag == f"{_MAIN}row":
                    element.clear()
        return marks


_TABLE = "{urn:oasis:names:tc:opendocument:xmlns:table:1.0}"
_TEXT = "{urn:oasis:names:tc:opendocument:xmlns:text:1.0}"
_CALC_EXTENSION = "{urn:org:documentfoundation:names:experimental:calc:xmlns:calcext:1.0}"
#: Past this, a run of repeated rows or columns is empty filler up to the sheet's end.
_MAX_REPEAT = 10_000


def _ods_marks(path: Path, sheet_name: str) -> _Marks:
    """The error cells, hidden rows and merged blocks of one table of an .ods file: calamine
    reads a failed formula's cell as empty and knows no hidden or merged rows. Its content.xml
    is parsed only when it holds one of them (a quick byte search first)."""
    with zipfile.ZipFile(path) as archive:
        found = False
        tail = b""
        with archive.open("content.xml") as stream:
            while block := stream.read(_SCAN_BLOCK):
                text = tail + block
                if any(mark in text for mark in (b"error", b"visibility=", b"-spanned=")):
                    found = True
                    break
                tail = text[-24:]
        if not found:
            return _Marks()
        marks = _Marks()
        with archive.open("content.xml") as stream:
            _scan_ods_table(stream, sheet_name, marks)
        return marks


def _scan_ods_table(stream: Any, sheet_name: str, marks: _Marks) -> None:
    inside = False
    row = 0  # rows before the current one
    column = 0  # columns before the current cell
    repeat_rows = 1
    for event, element in ElementTree.iterparse(stream, events=("start", "end")):
        tag = element.tag
        if tag == f"{_TABLE}table":
            if event == "start":
                inside = element.get(f"{_TABLE}name") == sheet_name
            elif inside:
                return
            continue
        if not inside:
            if event == "end" and tag == f"{_TABLE}table-row":
                element.clear()
            continue
        if tag == f"{_TABLE}table-row":
            if event == "start":
                repeat_rows = int(element.get(f"{_TABLE}number-rows-repeated", "1"))
                column = 0
                continue
            if element.get(f"{_TABLE}visibility", "visible") != "visible":
                if repeat_rows <= _MAX_REPEAT:
                    marks.hidden.update(range(row + 1, row + repeat_rows + 1))
                else:
                    marks.hidden_ranges.append(range(row + 1, row + repeat_rows + 1))
            row += repeat_rows
            element.clear()
        elif event == "end" and tag in (f"{_TABLE}table-cell", f"{_TABLE}covered-table-cell"):
            repeat_columns = int(element.get(f"{_TABLE}number-columns-repeated", "1"))
            rows = range(row + 1, row + min(repeat_rows, _MAX_REPEAT) + 1)
            columns = range(column, column + min(repeat_columns, _MAX_REPEAT))
            code = _ods_error(element)
            if code is not None:
                for each_row in rows:
                    for each_column in columns:
                        marks.errors[(each_row, each_column)] = code
            spanned = int(element.get(f"{_TABLE}number-rows-spanned", "1"))
            if spanned > 1:
                wide = int(element.get(f"{_TABLE}number-columns-spanned", "1"))
                for below in range(row + 2, row + min(spanned, _MAX_REPEAT) + 1):
                    for each_column in range(column, column + wide):
                        marks.merged[(below, each_column)] = row + 1
            column += repeat_columns


def _ods_error(cell: Any) -> str | None:
    """The error a cell shows, when its formula failed."""
    shown = "".join(cell.itertext()).strip()
    if cell.get(f"{_CALC_EXTENSION}value-type") == "error":
        return shown or "#N/A"
    if cell.get(f"{_TABLE}formula") and shown in ERROR_CODES:
        return shown
    return None


def _sheet_part(archive: zipfile.ZipFile, sheet_name: str) -> str | None:
    """The path inside the archive of the sheet's XML, from the workbook and its relationships."""
    workbook = ElementTree.fromstring(archive.read("xl/workbook.xml"))
    relationship = None
    for sheet in workbook.iter(f"{_MAIN}sheet"):
        if sheet.get("name") == sheet_name:
            relationship = sheet.get(_OFFICE_RELATIONSHIP)
    if relationship is None:
        return None
    relationships = ElementTree.fromstring(archive.read("xl/_rels/workbook.xml.rels"))
    for each in relationships.iter(f"{_RELATIONSHIPS}Relationship"):
        if each.get("Id") == relationship:
            target = each.get("Target", "")
            if target.startswith("/"):
                return target.lstrip("/")
            return str(PurePosixPath("xl") / target)
    return None


def _column_index(letters: str) -> int:
    """0-based index of a column named by letters: A -> 0, Z -> 25, AA -> 26."""
    index = 0
    for letter in letters:
        index = index * 26 + ord(letter) - ord("A") + 1
    return index - 1
