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
those are looked for in the .xlsx/.xlsm/.ods file itself (`spreadsheet_marks`); an .xls is not
looked into (an error cell there reads as empty, a hidden row as any other).

The workbook's cells are held by calamine, in native memory, while a sheet is read; rows become
Python objects one chunk at a time. A sheet is read again for each pass over it, as a CSV file is.
"""

from __future__ import annotations

import datetime
import zipfile
from collections.abc import Iterator, Mapping, Sequence, Set
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.etree import ElementTree

from pipeline.core import arrays
from pipeline.core.errors import InputError
from pipeline.core.models import FIELDS
from pipeline.stages.input.columns import EXPECT_FIELDS, ID_FIELD, resolve_columns
from pipeline.stages.input.input_file import (
    DEFAULT_CHUNK_ROWS,
    InputFile,
    RowBatch,
    first_line,
    open_binary,
)
from pipeline.stages.input.spreadsheet_marks import (
    ERROR_CODES,
    SCAN_BLOCK,
    SheetMarks,
    merged_followers,
    ods_marks,
    xlsx_marks,
)

if TYPE_CHECKING:
    import pyarrow
    from python_calamine import CalamineSheet, CalamineWorkbook

SPREADSHEET_SUFFIXES = frozenset({".xlsx", ".xlsm", ".xls", ".ods"})
_UUID_FIELDS = frozenset({"conversation_id", "inbox_id", "assignee_id"})
_CFB = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_ZIP = b"PK\x03\x04"


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

    def _batches(self, chunk_rows: int) -> Iterator[RowBatch]:
        with _workbook(self.path, self.name) as workbook:
            sheet = _sheet(workbook, self.sheet, self.name)
            marks = self._marks()
            fields = list(self._indexes.items())
            read = {self._first_column + index for _, index in fields}
            merged = {**marks.merged, **merged_followers(sheet, self.header_row, read)}
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

    def _marks(self) -> SheetMarks:
        suffix = self.path.suffix.lower()
        try:
            if suffix in {".xlsx", ".xlsm"}:
                return xlsx_marks(self.path, self.sheet)
            if suffix == ".ods":
                return ods_marks(self.path, self.sheet)
            return SheetMarks()
        except (zipfile.BadZipFile, KeyError, ElementTree.ParseError, OSError, ValueError) as error:
            raise InputError(
                f"{self.name}: cannot read sheet {self.sheet!r} ({first_line(error)}); the file "
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
    with open_binary(path, name) as file:
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
    indexes = resolve_columns(header, column_map, f"{where} (header in row {header_row})")
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
            f"{name}: cannot read sheet {sheet_name!r} ({first_line(error)}); the file may be "
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
            f"{name}, sheet {sheet.name!r}: cannot read its rows ({first_line(error)}); the "
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
        f"{name} is not a readable {kind} workbook ({first_line(error)}); it may be damaged "
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
            while block := file.read(SCAN_BLOCK):
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
