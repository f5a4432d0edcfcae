"""What calamine does not tell about a sheet, looked for in the workbook file itself: its error
cells (calamine reads a failed formula's cell as an empty one), its hidden rows, and the cells of
merged blocks below their first row. .xlsx/.xlsm sheets and .ods tables are scanned here, each
parsed only when a quick byte search finds one of them; an .xls is not looked into.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree

if TYPE_CHECKING:
    from python_calamine import CalamineSheet

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
_CELL_REFERENCE = re.compile(r"([A-Z]+)([0-9]+)")
_MAIN = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
_RELATIONSHIPS = "{http://schemas.openxmlformats.org/package/2006/relationships}"
_OFFICE_RELATIONSHIP = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}id"
#: Bytes read at a time when a workbook file or one of its parts is searched.
SCAN_BLOCK = 1024 * 1024


@dataclass
class SheetMarks:
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


def merged_followers(
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


def xlsx_marks(path: Path, sheet_name: str) -> SheetMarks:
    """The error cells and hidden rows of one sheet of an .xlsx/.xlsm file. Its XML is parsed
    only when it holds one of them: a quick byte search first, as most sheets have neither."""
    with zipfile.ZipFile(path) as archive:
        part = _sheet_part(archive, sheet_name)
        if part is None:
            return SheetMarks()
        found = False
        tail = b""
        with archive.open(part) as stream:
            while block := stream.read(SCAN_BLOCK):
                text = tail + block
                if b't="e"' in text or b'hidden="1"' in text or b'hidden="true"' in text:
                    found = True
                    break
                tail = text[-16:]
        if not found:
            return SheetMarks()
        marks = SheetMarks()
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


def ods_marks(path: Path, sheet_name: str) -> SheetMarks:
    """The error cells, hidden rows and merged blocks of one table of an .ods file: calamine
    reads a failed formula's cell as empty and knows no hidden or merged rows. Its content.xml
    is parsed only when it holds one of them (a quick byte search first)."""
    with zipfile.ZipFile(path) as archive:
        found = False
        tail = b""
        with archive.open("content.xml") as stream:
            while block := stream.read(SCAN_BLOCK):
                text = tail + block
                if any(mark in text for mark in (b"error", b"visibility=", b"-spanned=")):
                    found = True
                    break
                tail = text[-24:]
        if not found:
            return SheetMarks()
        marks = SheetMarks()
        with archive.open("content.xml") as stream:
            _scan_ods_table(stream, sheet_name, marks)
        return marks


def _scan_ods_table(stream: Any, sheet_name: str, marks: SheetMarks) -> None:
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
