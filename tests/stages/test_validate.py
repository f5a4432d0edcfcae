"""The validate stage: cell semantics, --set values, row checks, and their properties."""

from __future__ import annotations

import csv
import io
import uuid
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pipeline.core.errors import InputError
from pipeline.core.models import (
    FIELDS,
    STATUSES,
    FieldValues,
    InvalidRow,
    RowRequest,
    normalise_uuid,
)
from pipeline.stages.input.input_file import InputRow
from pipeline.stages.input.opening import open_input
from pipeline.stages.validate import UNSET, parse_cell, parse_fixed_values, validate_row

ID_1 = "0e5e1b7c-3c0a-4a4b-9c8d-1234567890ab"
ID_2 = "7d9f0c1e-5b2a-4c3d-8e4f-0a1b2c3d4e5f"

#: Whitespace that str.strip() removes, as spreadsheets and copy-paste produce it.
spaces = st.text(alphabet=" \t\u00a0\u2003", max_size=3)
uuids = st.uuids().map(str)


def mixed_case(text: str, flips: list[bool]) -> str:
    return "".join(
        char.upper() if flip else char
        for char, flip in zip(text, flips + [False] * len(text), strict=False)
    )


def row(
    conversation_id: str = ID_1,
    inbox: str | None = None,
    assignee: str | None = None,
    status: str | None = None,
) -> InputRow:
    return InputRow(7, conversation_id, (inbox, assignee, status))


# --- parse_cell ----------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [None, "", " ", "\t \u00a0"])
@pytest.mark.parametrize("field", FIELDS)
def test_absent_or_blank_cell_leaves_field_unchanged(field: str, raw: str | None) -> None:
    """No column, an empty cell or a cell of spaces means: leave the field unchanged."""
    assert parse_cell(field, raw) is UNSET


@pytest.mark.parametrize("raw", ["null", "NULL", " Null "])
def test_null_sets_assignee_to_json_null(raw: str) -> None:
    """The word null in any case, with spaces, sets assignee_id to JSON null."""
    assert parse_cell("assignee_id", raw) is None


@pytest.mark.parametrize("field", ["inbox_id", "status"])
def test_null_is_refused_for_other_fields(field: str) -> None:
    """null for any field but assignee_id is refused with the rule in the message."""
    with pytest.raises(ValueError, match="null is allowed for assignee_id only"):
        parse_cell(field, "NULL")


@pytest.mark.parametrize("raw", ["Closed", " ARCHIVED ", "open"])
def test_status_is_normalised(raw: str) -> None:
    """status is accepted in any case with spaces and sent in lower case."""
    assert parse_cell("status", raw) == raw.strip().lower()


def test_bad_status_lists_the_allowed_values() -> None:
    """An unknown status names the allowed values and the cell."""
    with pytest.raises(ValueError) as caught:
        parse_cell("status", "done")
    assert str(caught.value) == "status must be one of open, closed, archived, not 'done'"


def test_long_bad_cell_is_shortened_in_the_message() -> None:
    """A 10,000-character bad cell is quoted short, so reports stay readable."""
    with pytest.raises(ValueError) as caught:
        parse_cell("inbox_id", "x" * 10_000)
    assert len(str(caught.value)) < 120 and "10,000 characters" in str(caught.value)


@given(uuids, spaces, spaces, st.lists(st.booleans(), max_size=36))
def test_any_uuid_in_any_case_and_spacing_normalises(
    value: str, before: str, after: str, flips: list[bool]
) -> None:
    """Any uuid, in any mix of case with any surrounding spaces, becomes its canonical form."""
    raw = before + mixed_case(value, flips) + after
    assert parse_cell("inbox_id", raw) == value
    assert parse_cell("assignee_id", raw) == value
    assert validate_row(row(raw, status="open"), {}) == RowRequest(
        7, value, FieldValues.of({"status": "open"})
    )


def _accepted_by_models(text: str) -> bool:
    try:
        normalise_uuid(text)
    except ValueError:
        return False
    return True


@given(
    st.one_of(
        st.text(),
        st.text(alphabet="0123456789abcdefABCDEF-{}urn: \u0663\u00a0", min_size=30, max_size=46),
        uuids.map(lambda value: value.replace("-", "")),
        uuids.map(lambda value: "{" + value + "}"),
        # Near misses: one character of a uuid replaced by any other, e.g. a non-ASCII digit.
        st.builds(
            lambda value, index, char: value[:index] + char + value[index + 1 :],
            uuids,
            st.integers(0, 35),
            st.characters(),
        ),
    )
)
def test_parse_cell_accepts_exactly_what_normalise_uuid_accepts(text: str) -> None:
    """A uuid cell is accepted exactly when models.normalise_uuid accepts it, with its answer."""
    if not text.strip() or text.strip().lower() == "null":
        return
    if _accepted_by_models(text):
        assert parse_cell("inbox_id", text) == normalise_uuid(text)
    else:
        with pytest.raises(ValueError, match="inbox_id is not a uuid"):
            parse_cell("inbox_id", text)
        assert isinstance(validate_row(row(text, status="open"), {}), InvalidRow)


@given(st.text())
def test_status_accepts_only_the_three_values(text: str) -> None:
    """status is accepted exactly when it is open, closed or archived after strip and lower."""
    if not text.strip():
        assert parse_cell("status", text) is UNSET
    elif text.strip().lower() in STATUSES:
        assert parse_cell("status", text) == text.strip().lower()
    else:
        with pytest.raises(ValueError):
            parse_cell("status", text)


# --- parse_fixed_values --------------------------------------------------------------------


def test_fixed_values_are_parsed_like_cells() -> None:
    """--set values follow the cell rules: normalised uuids, status, null for assignee_id."""
    assert parse_fixed_values(
        ["Status=CLOSED", f"inbox_id= {ID_1.upper()} ", "assignee_id=null"]
    ) == {
        "status": "closed",
        "inbox_id": ID_1,
        "assignee_id": None,
    }
    assert parse_fixed_values([]) == {}


@pytest.mark.parametrize(
    ("flag", "expected"),
    [
        ("status", "--set status: expected FIELD=VALUE"),
        ("priority=high", "--set priority=high: unknown field 'priority'"),
        ("conversation_id=" + ID_1, "unknown field 'conversation_id'"),
        ("status=done", "--set status=done: status must be one of"),
        ("inbox_id=null", "--set inbox_id=null: inbox_id: null is allowed for assignee_id only"),
        ("status=", "--set status=: empty value"),
    ],
)
def test_bad_fixed_values_name_the_flag(flag: str, expected: str) -> None:
    """A bad --set flag is an InputError naming the flag and what is wrong."""
    with pytest.raises(InputError, match=expected.replace("(", r"\(")):
        parse_fixed_values([flag])


def test_conflicting_fixed_values_are_refused() -> None:
    """Setting one field twice to different values is refused; repeating the same is fine."""
    assert parse_fixed_values(["status=closed", "status=Closed"]) == {"status": "closed"}
    with pytest.raises(InputError, match="already set"):
        parse_fixed_values(["status=closed", "status=open"])


# --- validate_row --------------------------------------------------------------------------


def test_valid_row_becomes_a_request_of_the_fields_given() -> None:
    """A valid row becomes a RowRequest with normalised id and only the fields it sets."""
    result = validate_row(row(f" {ID_1.upper()} ", inbox=ID_2, assignee=" null ", status=""), {})
    assert result == RowRequest(7, ID_1, FieldValues.of({"inbox_id": ID_2, "assignee_id": None}))


@pytest.mark.parametrize(
    ("conversation_id", "reason"),
    [
        ("", "conversation_id is empty"),
        ("  ", "conversation_id is empty"),
        ("abc", "conversation_id is not a uuid: 'abc'"),
        ("1", "conversation_id is not a uuid: '1'"),
    ],
)
def test_bad_id_makes_the_row_invalid(conversation_id: str, reason: str) -> None:
    """An empty or non-uuid id makes the row invalid with a reason naming it."""
    result = validate_row(row(conversation_id, status="open"), {})
    assert isinstance(result, InvalidRow) and result.reason == reason and result.row == 7


def test_row_with_nothing_to_change_is_invalid() -> None:
    """A row whose cells are all empty or absent is invalid: nothing to change."""
    assert validate_row(row(ID_1, inbox="", status=" "), {}) == InvalidRow(
        7, ID_1, "nothing to change"
    )


def test_every_problem_of_a_row_is_reported() -> None:
    """All of a row's problems are listed, joined by '; ', in column order."""
    result = validate_row(row("abc", inbox="null", assignee="x", status="done"), {})
    assert result == InvalidRow(
        7,
        "abc",
        "conversation_id is not a uuid: 'abc'; inbox_id: null is allowed for assignee_id only; "
        "assignee_id is not a uuid: 'x'; status must be one of open, closed, archived, not 'done'",
    )


def test_fixed_values_override_the_file() -> None:
    """--set values replace the file's cells for their field, even bad or empty ones."""
    fixed = parse_fixed_values(["status=closed"])
    assert validate_row(row(ID_1, inbox=ID_2, status="bogus"), fixed) == RowRequest(
        7, ID_1, FieldValues.of({"inbox_id": ID_2, "status": "closed"})
    )
    assert validate_row(row(ID_1), fixed) == RowRequest(
        7, ID_1, FieldValues.of({"status": "closed"})
    )


cell_values = st.one_of(
    st.none(),
    st.text(max_size=8),
    st.sampled_from(["null", " NULL", "Open", "closed ", "ARCHIVED", "done"]),
    st.builds(lambda value, pad: pad + value.upper() + pad, uuids, spaces),
)


@given(st.one_of(st.text(max_size=40), uuids), cell_values, cell_values, cell_values)
def test_every_request_holds_values_the_api_accepts(
    conversation_id: str, inbox: str | None, assignee: str | None, status: str | None
) -> None:
    """Whatever the cells, the result is an InvalidRow or a RowRequest the API would accept."""
    result = validate_row(row(conversation_id, inbox, assignee, status), {})
    if isinstance(result, InvalidRow):
        assert result.reason
        return
    assert_acceptable(result)


def assert_acceptable(request: RowRequest) -> None:
    """What the API would accept: the checks shared with the fuzz test of the reader."""
    assert normalise_uuid(request.conversation_id) == request.conversation_id
    assert request.change
    for field, value in request.change.values:
        if value is None:
            assert field == "assignee_id"
        elif field == "status":
            assert value in STATUSES
        else:
            assert normalise_uuid(value) == value


# --- CSV round trip ------------------------------------------------------------------------


csv_cells = st.text(
    alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30
) | st.sampled_from([",", ";", '"', "\n", "\r", "\r\n", '""', " ", "null", "NA", "é😀"])


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([",", ";", "\t", "|"]),
    st.lists(st.tuples(csv_cells, csv_cells, csv_cells), min_size=1, max_size=15),
    st.sampled_from(["\n", "\r\n"]),
)
def test_csv_written_by_the_csv_module_reads_back_exactly(
    tmp_path_factory: pytest.TempPathFactory,
    delimiter: str,
    cells: list[tuple[str, str, str]],
    line_end: str,
) -> None:
    """Cells with delimiters, quotes, line breaks and unicode read back exactly as written."""
    # csv.writer leaves a lone \r unquoted unless the line terminator holds one; no reader can
    # tell that from a line end, Python's own included.
    assume(line_end == "\r\n" or not any("\r" in cell for each in cells for cell in each))
    # The id column holds a uuid so no row is blank (blank rows are skipped by design).
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator=line_end)
    writer.writerow(["conversation_id", "note", "status", "assignee_id"])
    ids = [str(uuid.UUID(int=index + 1)) for index in range(len(cells))]
    for conversation_id, (note, status, assignee) in zip(ids, cells, strict=True):
        writer.writerow([conversation_id, note, status, assignee])
    path: Path = tmp_path_factory.mktemp("roundtrip") / "rows.csv"
    path.write_text(buffer.getvalue(), encoding="utf-8", newline="")
    with open_input(path) as input_file:
        assert input_file.delimiter == delimiter
        rows = [each for chunk in input_file.chunks(4) for each in chunk]
    assert rows == [
        InputRow(number, conversation_id, (None, assignee, status))
        for number, (conversation_id, (_, status, assignee)) in enumerate(
            zip(ids, cells, strict=True), 1
        )
    ]


# --- fuzz: random files through the reader and the validator --------------------------------

_HEADERS = [
    b"conversation_id,inbox_id,assignee_id,status\n",
    b"\xef\xbb\xbfID;Status;Assignee_ID\r\n",
    b"id\tinbox_id\n",
    b"conversation_id|status|note\n",
]
_FRAGMENTS = [
    ID_1.encode(),
    ID_2.upper().encode(),
    b" null ",
    b"NULL",
    b"closed",
    b"Archived",
    b",",
    b";",
    b"\t",
    b"|",
    b'"',
    b"\n",
    b"\r\n",
    b"\r",
    b"\x00",
    b"\xff",
    b"\xc3\xa9",
    "😀".encode(),
    b"\xef\xbb\xbf",
    b"PK\x03\x04",
    b"PAR1",
]


def _parquet_bytes() -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.table({"conversation_id": [ID_1, "x"], "status": ["Open", None]}), buffer)
    return buffer.getvalue()


_PARQUET = _parquet_bytes()

fuzz_files = st.one_of(
    st.tuples(st.binary(max_size=400), st.just(".csv")),
    st.tuples(
        st.builds(
            lambda header, parts: header + b"".join(parts),
            st.sampled_from(_HEADERS),
            st.lists(st.sampled_from(_FRAGMENTS) | st.binary(max_size=6), max_size=40),
        ),
        st.sampled_from([".csv", ".tsv"]),
    ),
    st.tuples(
        st.builds(
            # A real Parquet file with bytes overwritten or cut: pyarrow's error paths.
            lambda at, junk, cut: (_PARQUET[:at] + junk + _PARQUET[at + len(junk) :])[:cut],
            st.integers(0, len(_PARQUET)),
            st.binary(min_size=1, max_size=8),
            st.integers(0, len(_PARQUET)) | st.just(len(_PARQUET)),
        ),
        st.just(".parquet"),
    ),
)


@settings(max_examples=300, deadline=None)
@given(fuzz_files)
def test_random_files_give_input_errors_or_rows_the_api_accepts(
    tmp_path_factory: pytest.TempPathFactory, case: tuple[bytes, str]
) -> None:
    """Random bytes as an input file give an InputError or rows the API would accept, no crash."""
    content, suffix = case
    path = tmp_path_factory.mktemp("fuzz") / f"input{suffix}"
    path.write_bytes(content)
    try:
        with open_input(path) as input_file:
            for chunk in input_file.chunks(7):
                for input_row in chunk:
                    assert input_row.row >= 1
                    result = validate_row(input_row, {})
                    if isinstance(result, RowRequest):
                        assert_acceptable(result)
                    else:
                        assert result.reason
    except InputError as error:
        assert str(error) and "\n" not in str(error)


# --- in bulk: validate_batch gives validate_row's answers ------------------------------------


def _checked_rows(rows: list[InputRow], fixed: dict[str, str | None]) -> list[object]:
    """validate_batch on `rows` (one batch), each row's answer as validate_row would give it."""
    import pyarrow as pa

    from pipeline.stages.input.input_file import RowBatch
    from pipeline.stages.validate import JSON_NULL, decode_change, validate_batch

    def column(values: list[str | None]) -> pa.Array | None:
        return None if values[0] is None else pa.array(values, pa.string())

    batch = RowBatch(
        pa.array([each.row for each in rows], pa.int64()),
        pa.array([each.conversation_id for each in rows], pa.string()),
        tuple(column([each.cells[index] for each in rows]) for index in range(3)),
        tuple(column([each.expected[index] for each in rows]) for index in range(3)),
    )
    checked = validate_batch(batch, fixed).to_pydict()
    answers: list[object] = []
    for index, each in enumerate(rows):
        reason = checked["reason"][index]
        conversation_id = checked["conversation_id"][index]
        if reason is not None:
            assert all(checked[name][index] is None for name in FIELDS)
            answers.append(InvalidRow(each.row, conversation_id, reason))
            continue
        target = decode_change([checked[name][index] for name in FIELDS])
        wanted = decode_change([checked[f"expect_{name}"][index] for name in FIELDS])
        assert JSON_NULL not in (value for _, value in target.values)
        answers.append(RowRequest(each.row, conversation_id, target, expected=wanted))
    return answers


bulk_ids = st.one_of(
    uuids,
    st.builds(lambda value, pad, flips: pad + mixed_case(value, flips) + pad, uuids, spaces,
              st.lists(st.booleans(), max_size=36)),
    st.sampled_from(["", " ", "abc", "{" + ID_1 + "}", ID_1.replace("-", ""), "\t" + ID_2]),
    st.text(max_size=12),
)  # fmt: skip


@pytest.mark.long
@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(bulk_ids, cell_values, cell_values, cell_values), min_size=1, max_size=25),
    st.booleans(),
    st.sampled_from([{}, {"status": "closed"}, {"assignee_id": None}]),
    st.data(),
)
def test_validate_batch_gives_validate_rows_answers(
    cells: list[tuple[str, str | None, str | None, str | None]],
    with_expected: bool,
    fixed: dict[str, str | None],
    data: st.DataObject,
) -> None:
    """validate_batch, the columnar check a big file takes, answers each row exactly as
    validate_row does: same id, same reason text, same change and expected values."""
    # A column is absent (None) or present (text) for every row of a file alike.
    absent = [all(row[index] is None for row in cells) for index in (1, 2, 3)]
    rows = []
    for number, (conversation_id, *row_cells) in enumerate(cells, 3):
        present = tuple(None if absent[index] else (row_cells[index] or "") for index in range(3))
        expected = (
            tuple(data.draw(cell_values.map(lambda value: value or "")) for _ in range(3))
            if with_expected
            else (None, None, None)
        )
        rows.append(InputRow(number, conversation_id, present, expected))  # type: ignore[arg-type]
    assert _checked_rows(rows, fixed) == [validate_row(row, fixed) for row in rows]
