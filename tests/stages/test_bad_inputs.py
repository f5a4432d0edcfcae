"""The bad-input corpus: every file in tests/data/bad_inputs gives what expectations.json says."""

from __future__ import annotations

import json
import os
import resource
from pathlib import Path
from typing import Any

import pytest

from pipeline.core.errors import InputError
from pipeline.core.models import InvalidRow, RowRequest
from pipeline.stages.input.opening import open_input
from pipeline.stages.validate import validate_row
from tests.helpers import REPO

CORPUS = REPO / "tests" / "data" / "bad_inputs"
EXPECTATIONS: dict[str, dict[str, Any]] = {
    name: expected
    for name, expected in json.loads((CORPUS / "expectations.json").read_text()).items()
    if not name.startswith("_")
}
NOT_CASES = {"expectations.json", "make_corpus.py"}


def read_and_validate(path: Path) -> list[RowRequest | InvalidRow]:
    with open_input(path) as input_file:
        return [validate_row(row, {}) for chunk in input_file.chunks(2) for row in chunk]


def test_every_corpus_file_has_an_expectation() -> None:
    """Each file in the corpus has an expectation and each expectation a file."""
    files = {path.name for path in CORPUS.iterdir() if path.name not in NOT_CASES}
    assert files == set(EXPECTATIONS)


@pytest.mark.parametrize(
    "name", sorted(name for name, case in EXPECTATIONS.items() if "exit" in case)
)
def test_refused_file_gives_one_clear_line(name: str) -> None:
    """A file refused as a whole raises InputError (exit 2) with one line naming the file."""
    expected = EXPECTATIONS[name]
    with pytest.raises(InputError) as caught:
        read_and_validate(CORPUS / name)
    message = str(caught.value)
    assert caught.value.exit_code == expected["exit"] == 2
    assert expected["message_contains"] in message
    assert name in message and "\n" not in message


@pytest.mark.parametrize(
    "name", sorted(name for name, case in EXPECTATIONS.items() if "rows" in case)
)
def test_read_file_gives_the_expected_invalid_rows(name: str) -> None:
    """A file that is read gives exactly the invalid rows expected; every other row is valid."""
    expected = EXPECTATIONS[name]
    results = read_and_validate(CORPUS / name)
    assert len(results) == expected["rows"]
    if "row_numbers" in expected:
        assert [result.row for result in results] == expected["row_numbers"]
    invalid = {
        str(result.row): result.reason for result in results if isinstance(result, InvalidRow)
    }
    assert set(invalid) == set(expected["invalid_rows"])
    for row, reason in expected["invalid_rows"].items():
        assert reason in invalid[row]


@pytest.mark.timeout(20)
@pytest.mark.parametrize("prefix", [b"", b"conversation_id,status\n"], ids=["holes", "header"])
def test_2gb_sparse_file_is_refused_without_reading_it(tmp_path: Path, prefix: bytes) -> None:
    """A 2 GB sparse file (all NUL after any prefix) is refused from its first block."""
    path = tmp_path / "huge.csv"
    path.write_bytes(prefix)
    os.truncate(path, 2 * 1024**3)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(InputError, match="contains NUL bytes"):
        read_and_validate(path)
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before
    assert grown_kib < 50 * 1024
