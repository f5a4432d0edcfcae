"""The read stage: file-level checks, column resolution, exact cells, streaming in chunks."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.core.errors import InputError
from pipeline.stages.input.input_file import InputFile, InputRow
from pipeline.stages.input.opening import open_input

ID_1 = "0e5e1b7c-3c0a-4a4b-9c8d-1234567890ab"
ID_2 = "7d9f0c1e-5b2a-4c3d-8e4f-0a1b2c3d4e5f"


def write(tmp_path: Path, content: str | bytes, name: str = "rows.csv") -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    return path


def read_rows(input_file: InputFile, chunk_rows: int = 50_000) -> list[InputRow]:
    return [row for chunk in input_file.chunks(chunk_rows) for row in chunk]


def rows_of(path: Path, **options: object) -> list[InputRow]:
    with open_input(path, **options) as input_file:  # type: ignore[arg-type]
        return read_rows(input_file)


def read_error(path: Path) -> str:
    """The InputError met opening or reading the file, whichever comes first."""
    with pytest.raises(InputError) as caught, open_input(path) as input_file:
        read_rows(input_file)
    message = str(caught.value)
    assert "\n" not in message
    return message


def refusal(path: Path | str, **options: object) -> str:
    with pytest.raises(InputError) as caught:
        open_input(path, **options)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "\n" not in message
    return message


# --- columns -------------------------------------------------------------------------------


def test_columns_resolved_by_name_other_columns_ignored(tmp_path: Path) -> None:
    """conversation_id, inbox_id, assignee_id, status are found by name; others are ignored."""
    path = write(tmp_path, f"note,status,conversation_id,x\nhello,closed,{ID_1},y\n")
    with open_input(path) as input_file:
        assert input_file.format == "csv"
        assert input_file.columns == {"conversation_id": "conversation_id", "status": "status"}
        assert read_rows(input_file) == [InputRow(1, ID_1, (None, None, "closed"))]


def test_header_names_match_ignoring_case_spaces_and_bom(tmp_path: Path) -> None:
    """Header names match after stripping spaces and a BOM, in any case."""
    path = write(tmp_path, f"\ufeff Conversation_ID , INBOX_ID,Status \n{ID_1},{ID_2},open\n")
    assert rows_of(path) == [InputRow(1, ID_1, (ID_2, None, "open"))]


def test_id_column_is_the_fallback_for_conversation_id(tmp_path: Path) -> None:
    """A column named id is read when there is no conversation_id column, and only then."""
    only_id = write(tmp_path, f"id,status\n{ID_1},open\n", "only_id.csv")
    assert rows_of(only_id)[0].conversation_id == ID_1
    both = write(tmp_path, f"id,conversation_id,status\n{ID_2},{ID_1},open\n", "both.csv")
    assert rows_of(both)[0].conversation_id == ID_1


def test_no_id_column_is_refused_listing_the_columns(tmp_path: Path) -> None:
    """A file without an id column is refused, naming the columns it has and --map."""
    message = refusal(write(tmp_path, "ticket,status\nx,open\n"))
    assert "no conversation_id (or id) column" in message
    assert "'ticket'" in message and "--map" in message


def test_column_map_renames_columns(tmp_path: Path) -> None:
    """column_map {FIELD: COLUMN} reads a field from a differently named column."""
    path = write(tmp_path, f"Ticket,Team,State\n{ID_1},{ID_2},closed\n")
    column_map = {"conversation_id": "ticket", "inbox_id": "Team", "status": "state"}
    with open_input(path, column_map=column_map) as input_file:
        assert input_file.columns == {
            "conversation_id": "Ticket",
            "inbox_id": "Team",
            "status": "State",
        }
        assert read_rows(input_file) == [InputRow(1, ID_1, (ID_2, None, "closed"))]


def test_column_map_beats_the_column_of_the_same_name(tmp_path: Path) -> None:
    """A mapped field is read from the mapped column, not from a column named like the field."""
    path = write(tmp_path, f"conversation_id,status,new_status\n{ID_1},open,closed\n")
    assert rows_of(path, column_map={"status": "new_status"})[0].cells == (None, None, "closed")


def test_column_map_with_unknown_field_is_refused(tmp_path: Path) -> None:
    """An unknown field in column_map is refused, listing the fields."""
    message = refusal(write(tmp_path, f"id\n{ID_1}\n"), column_map={"priority": "p"})
    assert "unknown field 'priority'" in message and "assignee_id" in message


def test_column_map_naming_a_missing_column_is_refused(tmp_path: Path) -> None:
    """column_map naming a column the file lacks is refused, listing the columns."""
    message = refusal(write(tmp_path, f"id,status\n{ID_1},open\n"), column_map={"status": "st"})
    assert "--map status=st" in message and "no column 'st'" in message


def test_two_fields_from_one_column_are_refused(tmp_path: Path) -> None:
    """Two fields read from the same column is refused as a likely --map mistake."""
    path = write(tmp_path, f"id,x\n{ID_1},{ID_2}\n")
    message = refusal(path, column_map={"inbox_id": "x", "assignee_id": "x"})
    assert "both be read from column 'x'" in message


def test_duplicate_header_for_a_field_is_refused(tmp_path: Path) -> None:
    """Two columns that both name a field we read are refused; duplicates we ignore are fine."""
    message = refusal(write(tmp_path, f"id,status,Status\n{ID_1},open,closed\n"))
    assert "2 columns named 'status'" in message
    fine = write(tmp_path, f"id,note,note\n{ID_1},a,b\n", "fine.csv")
    assert rows_of(fine) == [InputRow(1, ID_1, (None, None, None))]


# --- cells ---------------------------------------------------------------------------------


def test_cells_are_the_exact_text_written(tmp_path: Path) -> None:
    """Cells keep their text: no NaN, no type guessing, spaces kept for the validator."""
    path = write(
        tmp_path,
        "id,inbox_id,assignee_id,status\n"
        f"{ID_1},,null,NA\n"
        f" {ID_1.upper()} ,NaN, NULL ,None\n"
        '"",  ,"a,b","say ""hi"""\n',
    )
    assert [(row.conversation_id, row.cells) for row in rows_of(path)] == [
        (ID_1, ("", "null", "NA")),
        (f" {ID_1.upper()} ", ("NaN", " NULL ", "None")),
        ("", ("  ", "a,b", 'say "hi"')),
    ]


def test_bom_and_crlf_are_read(tmp_path: Path) -> None:
    """A UTF-8 BOM and CRLF line ends, as Excel writes them, read cleanly."""
    path = write(tmp_path, b"\xef\xbb\xbfconversation_id,status\r\n" + ID_1.encode() + b",open\r\n")
    assert rows_of(path) == [InputRow(1, ID_1, (None, None, "open"))]


@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"])
def test_delimiter_is_detected_from_the_header(tmp_path: Path, delimiter: str) -> None:
    """, ; tab and | are detected from the header line."""
    header = delimiter.join(["conversation_id", "inbox_id", "note"])
    path = write(tmp_path, f'{header}\n{ID_1}{delimiter}{ID_2}{delimiter}"a,b;c\t|"\n')
    with open_input(path) as input_file:
        assert input_file.delimiter == delimiter
        assert read_rows(input_file)[0].cells == (ID_2, None, None)


def test_delimiter_can_be_forced(tmp_path: Path) -> None:
    """delimiter forces one, by character or by name such as 'tab'."""
    path = write(tmp_path, f"conversation_id\tnote;a;b\n{ID_1}\tx;y;z\n")
    assert "no conversation_id" in refusal(path)
    assert rows_of(path, delimiter="tab") == [InputRow(1, ID_1, (None, None, None))]
    assert rows_of(path, delimiter="\t") == rows_of(path, delimiter="\\t")


def test_bad_forced_delimiter_is_refused(tmp_path: Path) -> None:
    """A forced delimiter must be one character that can delimit."""
    assert "--delimiter" in refusal(write(tmp_path, "id\nx\n"), delimiter="ab")


def test_single_column_file_of_ids(tmp_path: Path) -> None:
    """A file of ids only (the --set status=closed case) reads with no delimiter in sight."""
    assert rows_of(write(tmp_path, f"conversation_id\n{ID_1}\n{ID_2}\n")) == [
        InputRow(1, ID_1, (None, None, None)),
        InputRow(2, ID_2, (None, None, None)),
    ]


def test_quoted_newlines_keep_record_numbers(tmp_path: Path) -> None:
    """A cell with line breaks stays one record: row numbers count records, not lines."""
    path = write(tmp_path, f'id,note,status\n{ID_1},"one\r\ntwo\nthree",open\n{ID_2},x,closed\n')
    assert [(row.row, row.conversation_id) for row in rows_of(path)] == [(1, ID_1), (2, ID_2)]


def test_long_cells_are_read_whole(tmp_path: Path) -> None:
    """10,000-character cells are read whole."""
    long = "é" * 10_000
    path = write(tmp_path, f"id,note,status\n{ID_1},{long},{long}\n")
    assert rows_of(path)[0].cells == (None, None, long)


def test_blank_rows_are_skipped_but_counted(tmp_path: Path) -> None:
    """Blank lines and rows of empty cells are skipped; later rows keep their sheet numbers."""
    path = write(tmp_path, f"id,status\n{ID_1},open\n\n , \n{ID_2},closed\n,\n")
    assert [row.row for row in rows_of(path)] == [1, 4]


def test_short_rows_are_padded_with_empty_cells(tmp_path: Path) -> None:
    """A row with fewer cells than the header reads the missing cells as empty."""
    path = write(tmp_path, f"id,inbox_id,status\n{ID_1}\n")
    assert rows_of(path) == [InputRow(1, ID_1, ("", None, ""))]


def test_row_with_too_many_cells_names_its_line(tmp_path: Path) -> None:
    """A row with more cells than the header stops reading with its line and row number."""
    path = write(tmp_path, f'id,note,status\n{ID_1},"a\nb",open\n{ID_2},a,b,closed\n')
    with open_input(path) as input_file, pytest.raises(InputError) as caught:
        read_rows(input_file)
    assert "line 4 (row 2): 4 cells but the header has 3" in str(caught.value)


def test_unclosed_quote_is_refused(tmp_path: Path) -> None:
    """An unclosed quote is an error, not a cell that silently swallows the rest of the file."""
    path = write(tmp_path, f'id,note\n{ID_1},ok\n{ID_2},"never closed\n{ID_1},x\n')
    with open_input(path) as input_file, pytest.raises(InputError) as caught:
        read_rows(input_file)
    assert "never closed" in str(caught.value)


# --- streaming -----------------------------------------------------------------------------


def test_chunks_respect_size_and_can_be_read_again(tmp_path: Path) -> None:
    """chunks(n) yields lists of at most n rows and starts from the top on every call."""
    path = write(tmp_path, "id\n" + "".join(f"{ID_1}\n" for _ in range(7)))
    with open_input(path) as input_file:
        first = [len(chunk) for chunk in input_file.chunks(3)]
        second = [[row.row for row in chunk] for chunk in input_file.chunks(3)]
    assert first == [3, 3, 1]
    assert second == [[1, 2, 3], [4, 5, 6], [7]]


def test_invalid_utf8_deep_in_the_file_names_the_line(tmp_path: Path) -> None:
    """A bad byte far from the start stops the read naming its line, with advice to re-save."""
    body = "".join(f"{ID_1},open\n" for _ in range(20_000))
    path = write(tmp_path, ("id,status\n" + body).encode() + b"caf\xe9,open\n")
    with open_input(path) as input_file, pytest.raises(InputError) as caught:
        read_rows(input_file)
    message = str(caught.value)
    assert "not valid UTF-8: byte 0xe9 at line 20002" in message and "UTF-8" in message


def test_nul_byte_deep_in_the_file_names_the_line(tmp_path: Path) -> None:
    """A NUL byte past the first block stops the read naming its line."""
    body = "".join(f"{ID_1},open\n" for _ in range(5_000))
    path = write(tmp_path, "id,status\n" + body + "x\x00y,open\n")
    with open_input(path) as input_file, pytest.raises(InputError) as caught:
        read_rows(input_file)
    assert "line 5002: contains a NUL byte" in str(caught.value)


def test_endless_line_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    """A line of several MiB without a line end is refused, not loaded into memory."""
    path = write(tmp_path, "id,note\n" + f"{ID_1}," + "a" * 3_000_000)
    assert "line 2: longer than" in read_error(path)


def test_fingerprint_is_size_and_sha256(tmp_path: Path) -> None:
    """fingerprint() is the file's size and the sha256 of its bytes."""
    content = f"id,status\n{ID_1},open\n".encode()
    with open_input(write(tmp_path, content)) as input_file:
        fingerprint = input_file.fingerprint()
    assert (fingerprint.size, fingerprint.sha256) == (
        len(content),
        hashlib.sha256(content).hexdigest(),
    )


# --- stdin -----------------------------------------------------------------------------------


def test_stdin_is_spooled_read_twice_and_cleaned_up() -> None:
    """'-' reads CSV from stdin into a temporary file that can be read twice and is removed."""
    stdin = io.BytesIO(f"conversation_id;status\n{ID_1};open\n".encode())
    with open_input("-", stdin=stdin) as input_file:
        assert input_file.name == "stdin" and input_file.format == "csv"
        assert (
            read_rows(input_file)
            == read_rows(input_file)
            == [InputRow(1, ID_1, (None, None, "open"))]
        )
        spooled = input_file.path
        assert spooled.exists()
    assert not spooled.exists()


def test_empty_stdin_is_refused_and_leaves_no_file(tmp_path: Path) -> None:
    """Empty stdin is refused, and its temporary file does not outlive the refusal."""
    before = set(Path(tempfile.gettempdir()).glob("mateo-bulk-stdin-*"))
    assert "stdin is empty" in refusal("-", stdin=io.BytesIO(b""))
    assert set(Path(tempfile.gettempdir()).glob("mateo-bulk-stdin-*")) == before


# --- file-level refusals --------------------------------------------------------------------


def test_missing_file_directory_and_suffix_are_refused(tmp_path: Path) -> None:
    """A missing path, a directory and an unsupported suffix each get one clear line."""
    assert "no such file" in refusal(tmp_path / "nope.csv")
    assert "is a directory" in refusal(tmp_path)
    # A workbook is read by its suffix: text named .xlsx is a damaged workbook, not a CSV file.
    assert "is not a readable .xlsx workbook" in refusal(write(tmp_path, "x", "rows.xlsx"))
    assert "unsupported file type '.json'" in refusal(write(tmp_path, "{}", "rows.json"))


def test_unreadable_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file we may not read is refused with a permissions message."""
    path = write(tmp_path, f"id\n{ID_1}\n")
    path.chmod(0)
    if os.geteuid() == 0:
        # root reads any file whatever its mode; make open() fail as it would for anyone else.
        def refuse(self: Path, *args: object, **kwargs: object) -> None:
            raise PermissionError(13, "Permission denied", str(self))

        monkeypatch.setattr(Path, "open", refuse)
    assert "permission denied" in refusal(path)


def test_empty_and_header_only_files_are_refused(tmp_path: Path) -> None:
    """An empty file and a file with a header but no data rows are refused."""
    assert "is empty" in refusal(write(tmp_path, "", "empty.csv"))
    assert "has a header but no rows" in refusal(write(tmp_path, "id,status\r\n\r\n,\r\n"))


# --- Parquet -------------------------------------------------------------------------------


def test_parquet_reads_strings_nulls_as_empty(tmp_path: Path) -> None:
    """Parquet string columns read as text, nulls as empty cells, across batches."""
    path = tmp_path / "rows.parquet"
    table = pa.table(
        {
            "Conversation_ID": [ID_1, ID_2, None],
            "assignee_id": ["null", None, ID_1],
            "status": pa.array(["open", "CLOSED", None]).dictionary_encode(),
        }
    )
    pq.write_table(table, path, row_group_size=2)
    with open_input(path) as input_file:
        assert input_file.format == "parquet"
        assert [chunk for chunk in input_file.chunks(2)] == [
            [InputRow(1, ID_1, (None, "null", "open")), InputRow(2, ID_2, (None, "", "CLOSED"))],
            [InputRow(3, "", (None, ID_1, ""))],
        ]


def test_parquet_non_string_values_become_text(tmp_path: Path) -> None:
    """Integer ids and other non-string values are converted to text, for the validator."""
    path = tmp_path / "ints.parquet"
    pq.write_table(pa.table({"id": [1, 2], "status": [True, None]}), path)
    assert [(row.conversation_id, row.cells[2]) for row in rows_of(path)] == [
        ("1", "true"),
        ("2", ""),
    ]


def test_parquet_nested_column_for_a_field_is_refused(tmp_path: Path) -> None:
    """A nested column that we would read is refused; one we ignore is fine."""
    path = tmp_path / "nested.parquet"
    table = pa.table({"id": [ID_1], "status": [["open"]], "meta": [{"a": 1}]})
    pq.write_table(table, path)
    assert "holds nested values" in refusal(path)
    pq.write_table(table.drop_columns(["status"]), path)
    assert rows_of(path) == [InputRow(1, ID_1, (None, None, None))]


def test_damaged_parquet_files_are_refused(tmp_path: Path) -> None:
    """Truncated Parquet, a CSV named .parquet and a Parquet file with no rows are refused."""
    path = tmp_path / "whole.parquet"
    pq.write_table(pa.table({"id": [ID_1] * 100}), path)
    content = path.read_bytes()
    assert "incomplete Parquet file" in refusal(write(tmp_path, content[:-100], "cut.parquet"))
    assert "not a Parquet file" in refusal(write(tmp_path, "id\nx\n", "fake.parquet"))
    empty = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"id": pa.array([], pa.string())}), empty)
    assert "no rows" in refusal(empty)


# --- the fast path for plain CSV ---------------------------------------------------------------

_PLAIN_PIECES = [
    ID_1,
    ID_2.upper(),
    "null",
    "closed",
    " ",
    "\t",
    "\u00a0",
    "\x1c",
    "é",
    "\u2028",
    "",
    ",",
    ";",
    "\n",
    "\r\n",
    "\n\n",
    ", ,",
]


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(
        [
            "conversation_id,inbox_id,assignee_id,status\n",
            "\ufeffid;status\r\n",
            "id,expect_status,status,note\n",
            "id\n",
        ]
    ),
    st.lists(st.sampled_from(_PLAIN_PIECES), max_size=60),
    st.sampled_from([1, 2, 7, 50_000]),
)
def test_a_plain_file_reads_the_same_through_pyarrow_and_the_csv_module(
    tmp_path_factory: pytest.TempPathFactory,
    header: str,
    pieces: list[str],
    chunk_rows: int,
) -> None:
    """A file without quotes is read by pyarrow's CSV reader, which hands over the csv
    module's rows exactly: the same cells, row numbers, blank rows skipped, chunk sizes and
    errors (a short or long row, an empty line: the csv module reads on from there)."""
    path = tmp_path_factory.mktemp("plain") / "rows.csv"
    path.write_bytes((header + "".join(pieces)).encode())

    def read() -> list[list[InputRow]] | str:
        try:
            with open_input(path) as input_file:
                return list(input_file.chunks(chunk_rows))
        except InputError as error:
            return str(error)

    fast = read()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("pipeline.stages.input.csv_file.plain_csv", lambda path: None)
        assert read() == fast
