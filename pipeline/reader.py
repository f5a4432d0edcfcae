"""The read stage: stream the rows of a CSV or Parquet file in chunks.

Everything that can be wrong with the file as a whole (missing, binary, not UTF-8, no id column,
no rows) is checked by `open_input` before a single row is handed on, and raised as an
`InputError` with one line that says what to do. Problems only found further in (a bad byte at
line 800,000, a row with too many fields) raise the same error naming the line; the pipeline reads
the file once to validate before it sends anything, so those still stop the run before a request.

Cells are read as the exact text written: no NaN, no type guessing. What a cell means is decided
in `pipeline.validate`.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import count, repeat
from operator import itemgetter
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

from pipeline.errors import InputError
from pipeline.models import FIELDS

if TYPE_CHECKING:
    import pyarrow

#: The field naming the conversation a row changes; with FIELDS, what `column_map` may rename.
ID_FIELD = "conversation_id"
#: Optional columns of the values a row must still hold to be changed (undo files use them).
EXPECT_FIELDS: tuple[str, ...] = tuple(f"expect_{field}" for field in FIELDS)
MAPPABLE_FIELDS: tuple[str, ...] = (ID_FIELD, *FIELDS, *EXPECT_FIELDS)
#: Delimiters detected from the header line, in the order that wins a tie.
DELIMITERS: tuple[str, ...] = (",", ";", "\t", "|")
CSV_SUFFIXES = frozenset({".csv", ".tsv", ".txt"})
PARQUET_SUFFIXES = frozenset({".parquet", ".pq"})
DEFAULT_CHUNK_ROWS = 50_000

_SNIFF_BYTES = 64 * 1024
_HASH_BLOCK = 1024 * 1024
#: A physical line longer than this is refused rather than read whole: a file with no line ends
#: (a sparse or binary file past its first block) would otherwise be loaded into memory.
_MAX_LINE_CHARS = 1024 * 1024
_DELIMITER_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}

_EXCEL_ADVICE = 'in Excel use File > Save As > "CSV UTF-8" and pass that file'
#: Leading bytes of files people save as .csv by mistake, what they are, and what to do.
_MAGIC: tuple[tuple[bytes, str, str], ...] = (
    (b"PK\x03\x04", "a zip archive (an Excel .xlsx workbook?)", _EXCEL_ADVICE),
    (b"PK\x05\x06", "an empty zip archive", _EXCEL_ADVICE),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an old Excel .xls workbook", _EXCEL_ADVICE),
    (b"PAR1", "a Parquet file", "rename it to .parquet"),
    (b"\x1f\x8b", "gzip-compressed", "decompress it first"),
    (b"%PDF", "a PDF document", "export the data as CSV UTF-8"),
    (b"\xff\xfe", "UTF-16 text", "re-save it as UTF-8"),
    (b"\xfe\xff", "UTF-16 text", "re-save it as UTF-8"),
)


@dataclass(frozen=True, slots=True)
class InputRow:
    """One data row as written: its 1-based row number, its id cell and the raw field cells."""

    #: 1-based data row (the header is not counted; a CSV record spanning lines is one row).
    row: int
    conversation_id: str
    #: Raw text of inbox_id, assignee_id, status (FIELDS order); None for a column the file lacks.
    cells: tuple[str | None, str | None, str | None]
    #: Raw text of the expect_* columns (FIELDS order), when the file has any.
    expected: tuple[str | None, str | None, str | None] = (None, None, None)


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """Identifies an input file's exact bytes, so a resumed run knows it reads the same file."""

    size: int
    sha256: str

    def __str__(self) -> str:
        return f"{self.size}:{self.sha256}"


class InputFile:
    """An input file whose file-level checks passed; `chunks()` streams its rows.

    Use it as a context manager: rows read from stdin live in a temporary file until `close()`.
    """

    def __init__(
        self,
        path: Path,
        *,
        name: str,
        format: Literal["csv", "parquet"],
        columns: Mapping[str, str],
        indexes: Mapping[str, int],
        width: int,
        delimiter: str | None,
        temporary: bool = False,
    ) -> None:
        self.path = path
        #: How messages name the file: the path as given, or "stdin".
        self.name = name
        self.format = format
        #: Resolved field -> column name as written in the file.
        self.columns: Mapping[str, str] = dict(columns)
        self.delimiter = delimiter
        self._indexes = dict(indexes)
        self._width = width
        self._temporary = temporary

    def __repr__(self) -> str:
        return f"<InputFile {self.name!r} {self.format} columns={self.columns}>"

    def __enter__(self) -> InputFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Remove the temporary copy of stdin, if there is one."""
        if self._temporary:
            self._temporary = False
            self.path.unlink(missing_ok=True)

    def version(self) -> tuple[int, int, int]:
        """Size, modification time and inode: changes whenever the file is rewritten."""
        status = self.path.stat()
        return status.st_size, status.st_mtime_ns, status.st_ino

    def fingerprint(self) -> Fingerprint:
        """The size and sha256 of the file's bytes, read in blocks."""
        digest = hashlib.sha256()
        size = 0
        with _open_binary(self.path, self.name) as file:
            while block := file.read(_HASH_BLOCK):
                digest.update(block)
                size += len(block)
        return Fingerprint(size, digest.hexdigest())

    def chunks(self, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Iterator[list[InputRow]]:
        """Yield the data rows in lists of at most `chunk_rows`, from the start on every call."""
        if chunk_rows < 1:
            raise ValueError("chunk_rows must be at least 1")
        if self.format == "csv":
            return self._csv_chunks(chunk_rows)
        return self._parquet_chunks(chunk_rows)

    def _csv_chunks(self, chunk_rows: int) -> Iterator[list[InputRow]]:
        width = self._width
        id_index = self._indexes[ID_FIELD]
        # An absent column reads index `width`, where a None is appended to each record.
        absent = any(field not in self._indexes for field in (*FIELDS, *EXPECT_FIELDS))
        pick_cells = itemgetter(*(self._indexes.get(field, width) for field in FIELDS))
        expects = any(field in self._indexes for field in EXPECT_FIELDS)
        pick_expected = itemgetter(*(self._indexes.get(field, width) for field in EXPECT_FIELDS))
        delimiter = self.delimiter or ","
        chunk: list[InputRow] = []
        row_number = 0
        with _csv_reader(self.path, self.name, delimiter) as reader:
            next(reader, None)  # the header, checked by open_input
            for record in reader:
                row_number += 1
                if len(record) != width:
                    if len(record) > width:
                        raise InputError(
                            f"{self.name}, line {reader.line_num} (row {row_number}): "
                            f"{len(record)} cells but the header has {width}; quote cells that "
                            f"contain {_show_delimiter(delimiter)}"
                        )
                    # Some tools drop trailing empty cells; empty means "leave unchanged".
                    record += [""] * (width - len(record))
                conversation_id = record[id_index]
                if not conversation_id.strip() and _is_blank(record):
                    # Blank lines and rows of empty cells (spreadsheets export trailing ",,,")
                    # ask for nothing; they keep their row number so later rows match the sheet.
                    continue
                if absent:
                    record.append(None)  # type: ignore[arg-type]
                if expects:
                    row = InputRow(
                        row_number, conversation_id, pick_cells(record), pick_expected(record)
                    )
                else:
                    row = InputRow(row_number, conversation_id, pick_cells(record))
                chunk.append(row)
                if len(chunk) >= chunk_rows:
                    yield chunk
                    chunk = []
        if chunk:
            yield chunk

    def _parquet_chunks(self, chunk_rows: int) -> Iterator[list[InputRow]]:
        parquet_file, _, _ = _open_parquet(self.path, self.name)
        wanted = list(dict.fromkeys(self.columns.values()))
        row_number = 0
        batches = parquet_file.iter_batches(batch_size=chunk_rows, columns=wanted)
        while True:
            try:
                batch = next(batches, None)
                if batch is None:
                    return
                values = {name: _strings(batch.column(name)) for name in wanted}
            except _parquet_errors() as error:
                raise InputError(
                    f"{self.name}: cannot read the rows after row {row_number}: "
                    f"{_first_line(error)}; the file may be damaged, export it again"
                ) from None
            ids = values[self.columns[ID_FIELD]]
            field_values: list[Any] = [
                values[self.columns[field]] if field in self.columns else repeat(None)
                for field in FIELDS
            ]
            expected_values: list[Any] = [
                values[self.columns[field]] if field in self.columns else repeat(None)
                for field in EXPECT_FIELDS
            ]
            columns = zip(count(row_number + 1), ids, *field_values, *expected_values)
            chunk = [
                InputRow(number, conversation_id, (c[0], c[1], c[2]), (c[3], c[4], c[5]))
                for number, conversation_id, *c in columns
            ]
            row_number += len(chunk)
            if chunk:
                yield chunk


def open_input(
    path: str | Path,
    *,
    column_map: Mapping[str, str] | None = None,
    delimiter: str | None = None,
    stdin: BinaryIO | None = None,
) -> InputFile:
    """Check a CSV or Parquet input file as a whole and return it ready to stream.

    `path` "-" reads CSV from stdin (or from `stdin` when given), spooled to a temporary file
    because the pipeline reads its input twice. `column_map` maps FIELD -> COLUMN for files whose
    columns have other names; `delimiter` forces a CSV delimiter instead of detecting it.
    Raises InputError with one line saying what is wrong and what to do.
    """
    column_map = dict(column_map or {})
    unknown = [field for field in column_map if field not in MAPPABLE_FIELDS]
    if unknown:
        raise InputError(
            f"--map {unknown[0]}=...: unknown field {unknown[0]!r}; "
            f"fields are {', '.join(MAPPABLE_FIELDS)}"
        )
    forced_delimiter = _check_delimiter(delimiter) if delimiter is not None else None
    if str(path) == "-":
        spooled = _spool_stdin(stdin)
        try:
            return _open_csv(spooled, "stdin", column_map, forced_delimiter, temporary=True)
        except BaseException:
            spooled.unlink(missing_ok=True)
            raise
    path = Path(path)
    name = str(path)
    if not path.exists():
        raise InputError(f"{name}: no such file; check the path")
    if path.is_dir():
        raise InputError(f"{name} is a directory; pass a .csv or .parquet file")
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return _open_parquet_input(path, name, column_map)
    if suffix in CSV_SUFFIXES:
        return _open_csv(path, name, column_map, forced_delimiter)
    advice = (
        'in Excel use File > Save As > "CSV UTF-8"'
        if suffix in {".xlsx", ".xls", ".xlsm", ".ods"}
        else "mateo-bulk reads .csv and .parquet files"
    )
    raise InputError(f"{name}: unsupported file type {suffix or '(no suffix)'!r}; {advice}")


# --- CSV ---------------------------------------------------------------------------------------


def _open_csv(
    path: Path,
    name: str,
    column_map: Mapping[str, str],
    delimiter: str | None,
    *,
    temporary: bool = False,
) -> InputFile:
    with _open_binary(path, name) as file:
        head = file.read(_SNIFF_BYTES)
        size = os.fstat(file.fileno()).st_size
    if not head:
        raise InputError(f"{name} is empty; it needs a header line and at least one row")
    _refuse_binary(head, name)
    header_line = re.split(rb"[\r\n]", head, maxsplit=1)[0]
    if len(header_line) == len(head) and size > len(head):
        raise InputError(
            f"{name}: the first line is longer than {_SNIFF_BYTES // 1024} KiB; "
            "the first line must be a header such as conversation_id,status"
        )
    try:
        header_text = header_line.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _utf8_error(path, name) from None
    if delimiter is None:
        delimiter = _detect_delimiter(header_text)
    with _csv_reader(path, name, delimiter) as reader:
        header: list[str] = next(reader, [])
        if not header:
            raise InputError(
                f"{name}: the first line is empty; it must be a header such as "
                "conversation_id,status"
            )
        indexes = _resolve_columns(header, column_map, name)
        if all(_is_blank(record) for record in reader):
            raise InputError(f"{name} has a header but no rows")
    return InputFile(
        path,
        name=name,
        format="csv",
        columns={field: header[index] for field, index in indexes.items()},
        indexes=indexes,
        width=len(header),
        delimiter=delimiter,
        temporary=temporary,
    )


@contextmanager
def _csv_reader(path: Path, name: str, delimiter: str) -> Iterator[Any]:
    """A csv reader over the file (header first), turning decoding and CSV errors into
    InputErrors that name the line."""
    with _open_binary(path, name) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8-sig", errors="strict", newline="")
        reader = csv.reader(_bounded_lines(text, name), delimiter=delimiter, strict=True)
        try:
            yield reader
        except UnicodeDecodeError:
            raise _utf8_error(path, name) from None
        except csv.Error as error:
            raise InputError(
                f"{name}, line {reader.line_num}: {_explain_csv_error(error)}"
            ) from None


def _bounded_lines(text: io.TextIOWrapper, name: str) -> Iterator[str]:
    """Yield physical lines, refusing NUL bytes and lines too long to be CSV."""
    readline = text.readline
    for number in count(1):
        line = readline(_MAX_LINE_CHARS)
        if not line:
            return
        if len(line) == _MAX_LINE_CHARS and line[-1] not in "\r\n":
            raise InputError(
                f"{name}, line {number}: longer than {_MAX_LINE_CHARS:,} characters; "
                "this does not look like a CSV file"
            )
        if "\x00" in line:
            raise InputError(
                f"{name}, line {number}: contains a NUL byte; this looks like a binary file, "
                "not CSV"
            )
        yield line


def _explain_csv_error(error: csv.Error) -> str:
    message = str(error)
    if "unexpected end of data" in message:
        return 'a quoted cell is never closed: check the " characters on this line and above'
    if "field larger than field limit" in message:
        return f"a cell is longer than {csv.field_size_limit():,} characters"
    if "expected after" in message:
        return f'malformed quoting ({message}): a " inside a quoted cell must be doubled ("")'
    return f"malformed CSV: {message}"


def _detect_delimiter(header: str) -> str:
    """The candidate delimiter appearing most often in the header line; ',' for one column."""
    counts = [header.count(candidate) for candidate in DELIMITERS]
    best = max(counts)
    return DELIMITERS[counts.index(best)] if best else ","


def _check_delimiter(delimiter: str) -> str:
    resolved = _DELIMITER_NAMES.get(delimiter.lower(), delimiter)
    if len(resolved) != 1 or resolved in '"\r\n' or resolved.isalnum():
        raise InputError(f"--delimiter {delimiter!r}: must be one character such as , ; | or tab")
    return resolved


def _show_delimiter(delimiter: str) -> str:
    return "tab" if delimiter == "\t" else repr(delimiter)


def _is_blank(record: Sequence[str]) -> bool:
    return not any(cell.strip() for cell in record)


def _refuse_binary(head: bytes, name: str) -> None:
    for magic, what, advice in _MAGIC:
        if head.startswith(magic):
            raise InputError(f"{name} is {what}, not a CSV file; {advice}")
    if b"\x00" in head:
        raise InputError(
            f"{name} contains NUL bytes: it is a binary file, not CSV; "
            "pass a CSV UTF-8 or Parquet file"
        )


def _utf8_error(path: Path, name: str) -> InputError:
    """Locate the first byte that is not UTF-8 and say how to fix it."""
    found = _find_invalid_utf8(path)
    where = ""
    if found is not None:
        line, offset, byte = found
        where = f": byte 0x{byte:02x} at line {line} (byte offset {offset})"
    return InputError(
        f"{name} is not valid UTF-8{where}; re-save it as UTF-8 "
        '(in Excel: Save As > "CSV UTF-8"); other encodings are not guessed'
    )


def _find_invalid_utf8(path: Path) -> tuple[int, int, int] | None:
    """(line, byte offset, byte) of the first invalid UTF-8 sequence, read in blocks."""
    line = 1
    offset = 0
    pending = b""
    with path.open("rb") as file:
        while True:
            block = file.read(_HASH_BLOCK)
            data = pending + block
            try:
                _, consumed = codecs.utf_8_decode(data, "strict", not block)
            except UnicodeDecodeError as error:
                return (
                    line + data.count(b"\n", 0, error.start),
                    offset + error.start,
                    data[error.start],
                )
            line += data.count(b"\n", 0, consumed)
            offset += consumed
            pending = data[consumed:]
            if not block:
                return None


def _spool_stdin(stdin: BinaryIO | None) -> Path:
    if stdin is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise InputError("no input on stdin: pipe a CSV file in, e.g. `... run - < rows.csv`")
        stdin = sys.stdin.buffer
    handle, name = tempfile.mkstemp(prefix="mateo-bulk-stdin-", suffix=".csv")
    spooled = Path(name)
    try:
        with os.fdopen(handle, "wb") as file:
            shutil.copyfileobj(stdin, file, _HASH_BLOCK)
    except BaseException:
        spooled.unlink(missing_ok=True)
        raise
    return spooled


# --- Parquet -----------------------------------------------------------------------------------


def _open_parquet_input(path: Path, name: str, column_map: Mapping[str, str]) -> InputFile:
    import pyarrow as pa

    with _open_binary(path, name) as file:
        size = os.fstat(file.fileno()).st_size
        head = file.read(4)
        if size >= 8:
            file.seek(-4, os.SEEK_END)
        tail = file.read(4)
    if size == 0:
        raise InputError(f"{name} is empty; export the data again")
    if head != b"PAR1":
        raise InputError(f"{name} is not a Parquet file (no PAR1 marker at the start)")
    if size < 12 or tail != b"PAR1":
        raise InputError(
            f"{name} is an incomplete Parquet file (the end marker is missing: a truncated "
            "download or copy?); export or copy it again"
        )
    _, schema, row_count = _open_parquet(path, name)
    indexes = _resolve_columns(schema.names, column_map, name)
    for field, index in indexes.items():
        column_type = schema.field(index).type
        if pa.types.is_nested(column_type):
            column = schema.names[index]
            read_as = "" if _normalise_name(column) == field else f" (read as {field})"
            raise InputError(
                f"{name}: column {column!r}{read_as} holds nested values "
                f"({column_type}); it must hold one plain value per row"
            )
    if row_count == 0:
        raise InputError(f"{name} has columns but no rows")
    return InputFile(
        path,
        name=name,
        format="parquet",
        columns={field: schema.names[index] for field, index in indexes.items()},
        indexes=indexes,
        width=len(schema.names),
        delimiter=None,
    )


def _open_parquet(path: Path, name: str) -> tuple[Any, Any, int]:
    """The pyarrow ParquetFile, its Arrow schema and its row count."""
    import pyarrow.parquet as pq

    try:
        # Without pre-buffering a row group is read column by column: ~30 MiB less peak memory
        # on a 1M-row file, at no cost on a local disk.
        parquet_file = pq.ParquetFile(path, pre_buffer=False)
        return parquet_file, parquet_file.schema_arrow, parquet_file.metadata.num_rows
    except _parquet_errors() as error:
        raise InputError(
            f"{name} is not a readable Parquet file ({_first_line(error)}); export it again"
        ) from None


def _parquet_errors() -> tuple[type[Exception], ...]:
    import pyarrow as pa

    # A damaged file also surfaces as UnicodeDecodeError (a ValueError) from pyarrow's own
    # decoding of column names and metadata, not only as ArrowException.
    return (pa.ArrowException, OSError, ValueError)


def _strings(array: pyarrow.Array | pyarrow.ChunkedArray) -> list[str]:
    """The column as text: non-string values through str(), nulls as empty cells."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not (pa.types.is_string(array.type) or pa.types.is_large_string(array.type)):
        try:
            array = pc.cast(array, pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return ["" if value is None else str(value) for value in array.to_pylist()]
    result: list[str] = pc.fill_null(array, "").to_pylist()
    return result


# --- shared --------------------------------------------------------------------------------------


def _open_binary(path: Path, name: str) -> BinaryIO:
    try:
        return path.open("rb")
    except PermissionError:
        raise InputError(f"{name}: permission denied; check the file's permissions") from None
    except OSError as error:
        raise InputError(f"{name}: cannot read it ({error.strerror or error})") from None


def _normalise_name(column: str) -> str:
    return column.strip().lstrip("\ufeff").strip().casefold()


def _resolve_columns(
    header: Sequence[str], column_map: Mapping[str, str], name: str
) -> dict[str, int]:
    """field -> index of the column it is read from; InputError when that is not clear-cut."""
    positions: dict[str, list[int]] = {}
    for index, column in enumerate(header):
        positions.setdefault(_normalise_name(column), []).append(index)

    indexes: dict[str, int] = {}
    for field in MAPPABLE_FIELDS:
        if field in column_map:
            wanted = _normalise_name(column_map[field])
            if wanted not in positions:
                raise InputError(
                    f"--map {field}={column_map[field]}: {name} has no column "
                    f"{column_map[field]!r}; its columns are {_list_columns(header)}"
                )
        elif field == ID_FIELD:
            wanted = next((each for each in (ID_FIELD, "id") if each in positions), "")
            if not wanted:
                raise InputError(
                    f"{name} has no conversation_id (or id) column; its columns are "
                    f"{_list_columns(header)}. The first line must be a header; "
                    "use --map conversation_id=COLUMN for another name"
                )
        elif field in positions:
            wanted = field
        else:
            continue
        found = positions[wanted]
        if len(found) > 1:
            raise InputError(
                f"{name} has {len(found)} columns named {header[found[0]].strip()!r} (columns "
                f"{', '.join(str(each + 1) for each in found)}); rename or remove all but one"
            )
        indexes[field] = found[0]

    readers: dict[int, str] = {}
    for field, index in indexes.items():
        if index in readers:
            raise InputError(
                f"{name}: {readers[index]} and {field} would both be read from column "
                f"{header[index]!r}; check the --map options"
            )
        readers[index] = field
    return indexes


def _list_columns(header: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(repr(column[:40]) for column in header[:limit])
    return shown + (f" and {len(header) - limit} more" if len(header) > limit else "")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
