"""How the bytes of a CSV file become records: UTF-8 (a BOM allowed, nothing else guessed),
physical lines, the delimiter, and the one-line explanations of what is wrong, from a binary
file saved as .csv to a quote never closed. Errors name the line they are on.
"""

from __future__ import annotations

import codecs
import csv
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from itertools import chain
from pathlib import Path
from typing import Any, BinaryIO

from pipeline.core.errors import InputError
from pipeline.stages.input.input_file import READ_BLOCK, open_binary

#: Delimiters detected from the header line, in the order that wins a tie.
DELIMITERS: tuple[str, ...] = (",", ";", "\t", "|")
#: CSV is decoded and split into lines a block at a time, so that the csv module pulls its lines
#: from a list at C speed instead of from a Python generator, one call per line.
_TEXT_BLOCK = 1024 * 1024
#: A physical line longer than this is refused rather than read whole: a file with no line ends
#: (a sparse or binary file past its first block) would otherwise be loaded into memory.
MAX_LINE_CHARS = 1024 * 1024
_BOM = codecs.BOM_UTF8
#: Characters str.splitlines() breaks at but a CSV file's lines do not (only \n, \r\n, \r do,
#: as io.TextIOWrapper(newline="") splits them): a block holding one is split by _LINE instead.
_OTHER_LINE_BREAKS = ("\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")
_LINE = re.compile(r"[^\r\n]*(?:\r\n|\r|\n)|[^\r\n]+")
_DELIMITER_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}

_EXCEL_ADVICE = 'in Excel use File > Save As > "CSV UTF-8" and pass that file'
#: Workbooks are read as they are, by their suffix, so the advice is to give them the right one.
_WORKBOOK_ADVICE = "rename it to {} and pass it as it is (--sheet NAME picks a sheet)"
#: Leading bytes of files people save as .csv by mistake, what they are, and what to do.
_MAGIC: tuple[tuple[bytes, str, str], ...] = (
    (b"PK\x03\x04", "a zip archive (an Excel .xlsx workbook?)", _WORKBOOK_ADVICE.format(".xlsx")),
    (b"PK\x05\x06", "an empty zip archive", _EXCEL_ADVICE),
    (
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
        "an old Excel .xls workbook",
        _WORKBOOK_ADVICE.format(".xls"),
    ),
    (b"PAR1", "a Parquet file", "rename it to .parquet"),
    (b"\x1f\x8b", "gzip-compressed", "decompress it first"),
    (b"%PDF", "a PDF document", "export the data as CSV UTF-8"),
    (b"\xff\xfe", "UTF-16 text", "re-save it as UTF-8"),
    (b"\xfe\xff", "UTF-16 text", "re-save it as UTF-8"),
)


@contextmanager
def csv_reader(path: Path, name: str, delimiter: str) -> Iterator[Any]:
    """A csv reader over the file (header first), turning decoding and CSV errors into
    InputErrors that name the line."""
    with open_binary(path, name) as raw:
        lines = chain.from_iterable(_line_blocks(raw, name))
        reader = csv.reader(lines, delimiter=delimiter, strict=True)
        try:
            yield reader
        except UnicodeDecodeError:
            raise utf8_error(path, name) from None
        except csv.Error as error:
            raise InputError(
                f"{name}, line {reader.line_num}: {_explain_csv_error(error)}"
            ) from None


def _line_blocks(raw: BinaryIO, name: str) -> Iterator[list[str]]:
    """The file's physical lines, a block's worth per list, exactly as
    `io.TextIOWrapper(raw, encoding="utf-8-sig", newline="").readline()` returns them (line ends
    kept: \\n, \\r\\n or \\r). A line with a NUL byte or longer than MAX_LINE_CHARS, and
    bytes that are not UTF-8, raise once every line before them has been handed out, so the
    first problem in the file is the one reported."""
    decode = codecs.utf_8_decode
    pending = b""
    carry = ""  # the start of a line whose end is in a later block
    lines_before = 0
    first = True
    while True:
        block = raw.read(_TEXT_BLOCK)
        data = pending + block if pending else block
        if first:
            first = False
            if data.startswith(_BOM):
                data = data[len(_BOM) :]
        final = not block
        bad_bytes: UnicodeDecodeError | None = None
        try:
            text, consumed = decode(data, "strict", final)
        except UnicodeDecodeError as error:
            text, consumed = decode(data[: error.start], "strict", True)
            bad_bytes = error
        pending = data[consumed:]
        if carry:
            text = carry + text
        if any(each in text for each in _OTHER_LINE_BREAKS):
            lines = _LINE.findall(text)
        else:
            lines = text.splitlines(True)
        carry = ""
        if lines and lines[-1][-1] != "\n" and (not final or bad_bytes is not None):
            # Unfinished, or ending in \r that a \n in the next block may complete.
            carry = lines.pop()
            if bad_bytes is not None:
                # The bytes that are not UTF-8 are on this line; a line ended by \r is whole.
                if carry[-1] == "\r":
                    lines.append(carry)
                carry = ""
        problem = _first_bad_line(lines, "\x00" in text)
        if problem is not None:
            index, message = problem
            if index:
                yield lines[:index]
            raise InputError(f"{name}, line {lines_before + index + 1}: {message}")
        if lines:
            yield lines
        lines_before += len(lines)
        if bad_bytes is not None:
            raise bad_bytes
        if len(carry) >= MAX_LINE_CHARS:
            raise InputError(f"{name}, line {lines_before + 1}: {_too_long()}")
        if final:
            return


def _too_long() -> str:
    return f"longer than {MAX_LINE_CHARS:,} characters; this does not look like a CSV file"


_NUL = "contains a NUL byte; this looks like a binary file, not CSV"


def _first_bad_line(lines: list[str], nul: bool) -> tuple[int, str] | None:
    """The index of the first line with a NUL byte or too long to be CSV, and what is wrong;
    `nul` says whether the text may hold a NUL at all."""
    if not nul and not (lines and max(map(len, lines)) >= MAX_LINE_CHARS):
        return None
    for index, line in enumerate(lines):
        if len(line.rstrip("\r\n")) >= MAX_LINE_CHARS:
            return index, _too_long()
        if "\x00" in line:
            return index, _NUL
    return None


def _explain_csv_error(error: csv.Error) -> str:
    message = str(error)
    if "unexpected end of data" in message:
        return 'a quoted cell is never closed: check the " characters on this line and above'
    if "field larger than field limit" in message:
        return f"a cell is longer than {csv.field_size_limit():,} characters"
    if "expected after" in message:
        return f'malformed quoting ({message}): a " inside a quoted cell must be doubled ("")'
    return f"malformed CSV: {message}"


def detect_delimiter(header: str) -> str:
    """The candidate delimiter appearing most often in the header line; ',' for one column."""
    counts = [header.count(candidate) for candidate in DELIMITERS]
    best = max(counts)
    return DELIMITERS[counts.index(best)] if best else ","


def check_delimiter(delimiter: str) -> str:
    resolved = _DELIMITER_NAMES.get(delimiter.lower(), delimiter)
    if len(resolved) != 1 or resolved in '"\r\n' or resolved.isalnum():
        raise InputError(f"--delimiter {delimiter!r}: must be one character such as , ; | or tab")
    return resolved


def show_delimiter(delimiter: str) -> str:
    return "tab" if delimiter == "\t" else repr(delimiter)


def is_blank(record: Sequence[str]) -> bool:
    return not any(cell.strip() for cell in record)


def refuse_binary(head: bytes, name: str) -> None:
    # An OpenDocument file starts with its uncompressed mimetype, which names what it is.
    if head.startswith(b"PK\x03\x04") and b"opendocument.spreadsheet" in head[:128]:
        raise InputError(
            f"{name} is an OpenDocument spreadsheet, not a CSV file; "
            + _WORKBOOK_ADVICE.format(".ods")
        )
    for magic, what, advice in _MAGIC:
        if head.startswith(magic):
            raise InputError(f"{name} is {what}, not a CSV file; {advice}")
    if b"\x00" in head:
        raise InputError(
            f"{name} contains NUL bytes: it is a binary file, not CSV; "
            "pass a CSV UTF-8 or Parquet file"
        )


def utf8_error(path: Path, name: str) -> InputError:
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
            block = file.read(READ_BLOCK)
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
