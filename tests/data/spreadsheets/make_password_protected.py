"""Write password_protected.xlsx: a two-row workbook encrypted as Excel encrypts one when it is
saved with a password ("secret"), for the test that such a file is refused with one line.

Needs openpyxl and msoffcrypto-tool (not test dependencies: the file is kept in the repository):

    pip install openpyxl msoffcrypto-tool
    python tests/data/spreadsheets/make_password_protected.py
"""

from __future__ import annotations

import io
from pathlib import Path

import openpyxl
from msoffcrypto.format.ooxml import OOXMLFile

HERE = Path(__file__).parent


def main() -> None:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    assert sheet is not None
    sheet.append(["conversation_id", "status"])
    sheet.append(["3f1b0a1e-5c2d-4e6f-8a9b-0c1d2e3f4a5b", "closed"])
    plain = io.BytesIO()
    workbook.save(plain)
    plain.seek(0)
    with (HERE / "password_protected.xlsx").open("wb") as out:
        OOXMLFile(plain).encrypt("secret", out)


if __name__ == "__main__":
    main()
