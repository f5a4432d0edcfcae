"""Write the bad-input corpus: one file per case; what each must give is in expectations.json.

Run it from anywhere to regenerate the files (the output is deterministic):
    python tests/data/bad_inputs/make_corpus.py
The 2 GB sparse file is not part of the corpus: tests/stages/test_bad_inputs.py makes it in a
temporary directory, because committing it, even sparse, would be a trap for every clone.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

HERE = Path(__file__).resolve().parent
ID_1 = "0e5e1b7c-3c0a-4a4b-9c8d-1234567890ab"
ID_2 = "7d9f0c1e-5b2a-4c3d-8e4f-0a1b2c3d4e5f"
ID_3 = "b2c4e6f8-1a3c-4e5a-9b7d-2f4a6c8e0b1d"
INBOX = "6762b34f-4e26-4a8e-a032-35a1e58e1b1c"
AGENT = "d264cddd-432a-4933-9f85-43633822dce7"


def text_files() -> dict[str, bytes]:
    header = "conversation_id,inbox_id,assignee_id,status\n"
    rows = f"{ID_1},{INBOX},,closed\n{ID_2},,{AGENT},open\n"
    long_cell = "x" * 10_000
    return {
        "empty.csv": b"",
        "header_only.csv": b"conversation_id,status\r\n",
        "header_and_blank_lines.csv": b"conversation_id,status\n\n,\n\n",
        "no_id_column.csv": f"ticket,status\n{ID_1},closed\n".encode(),
        "duplicate_headers.csv": f"conversation_id,status,Status\n{ID_1},open,closed\n".encode(),
        # A PNG signature and some of its header: binary, with NUL bytes in the first block.
        "binary.csv": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10" + bytes(range(256)),
        "nul_bytes.csv": (header + f"{ID_1},{INBOX},\x00,closed\n").encode(),
        "utf16.csv": (header + rows).encode("utf-16"),
        "gzip_renamed.csv": b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + b"\x00" * 10,
        "xls_renamed.csv": b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 504,
        "invalid_utf8.csv": (header + rows).encode() + f"{ID_3},,,\xff\xfe\n".encode("latin-1"),
        "latin1.csv": f"conversation_id,status,note\n{ID_1},closed,Café Müller\n".encode("latin-1"),
        "bom_crlf.csv": b"\xef\xbb\xbf" + (header + rows).replace("\n", "\r\n").encode(),
        "semicolon.csv": (header + rows).replace(",", ";").encode(),
        "tab_delimited.tsv": (header + rows).replace(",", "\t").encode(),
        "pipe_delimited.csv": (header + rows).replace(",", "|").encode(),
        "quoted_newlines.csv": (
            "conversation_id,note,status\n"
            f'{ID_1},"first line\r\nsecond line, with a comma",closed\n'
            f'{ID_2},"a ""quoted"" word\nand another line",open\n'
            f'not-a-uuid,"row 3 of the data,\nfive lines down",closed\n'
        ).encode(),
        "long_cells.csv": (
            "conversation_id,note,status\n"
            f"{ID_1},{long_cell},closed\n"
            f'{ID_2},"{long_cell}",{long_cell}\n'
        ).encode(),
        "too_many_cells.csv": (header + rows + f"{ID_3},{INBOX},x,y,closed\n").encode(),
        "unclosed_quote.csv": (header + f'{ID_1},"{INBOX},,closed\n' + rows).encode(),
        "blank_rows.csv": (header + f"{ID_1},,,closed\n\n,,,\n , , , \n{ID_2},,null,\n").encode(),
        "row_problems.csv": (
            "Conversation_ID,Inbox_ID,Assignee_ID,Status,note\n"
            f" {ID_1.upper()} ,,NULL,Closed,normalised: fine\n"
            f"{ID_2}-0,,,closed,bad id\n"
            f"{ID_3},null,,,null inbox\n"
            f"{ID_1},,,Done,bad status\n"
            f"{ID_2},,,,nothing to change\n"
            f",,,closed,empty id\n"
            f"{{{ID_3}}},,,closed,braces\n"
            f"{ID_3},{INBOX[:-1]},x,,two bad cells\n"
        ).encode(),
    }


def excel_workbook() -> bytes:
    """A minimal .xlsx made with zipfile: what Excel writes, renamed to .csv by its user."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as workbook:
        for name, content in {
            "[Content_Types].xml": '<?xml version="1.0"?><Types/>',
            "_rels/.rels": '<?xml version="1.0"?><Relationships/>',
            "xl/workbook.xml": '<?xml version="1.0"?><workbook><sheets/></workbook>',
            "xl/worksheets/sheet1.xml": '<?xml version="1.0"?><worksheet><sheetData/></worksheet>',
        }.items():
            # A fixed date keeps the file byte-identical between runs.
            workbook.writestr(zipfile.ZipInfo(name, (2024, 1, 1, 0, 0, 0)), content)
    return buffer.getvalue()


def parquet_files(directory: Path) -> None:
    pq.write_table(
        pa.table({"id": pa.array([1, 2, 3], pa.int64()), "status": ["closed", "open", None]}),
        directory / "integer_ids.parquet",
    )
    pq.write_table(
        pa.table(
            {
                "conversation_id": [ID_1, ID_2],
                "status": ["closed", "open"],
                "inbox_id": [{"id": INBOX, "name": "Support"}, {"id": INBOX, "name": "Support"}],
            }
        ),
        directory / "nested_columns.parquet",
    )
    pq.write_table(
        pa.table({"conversation_id": [ID_1, ID_2], "tags": [["vip"], []], "status": ["open"] * 2}),
        directory / "nested_ignored_column.parquet",
    )
    good = io.BytesIO()
    pq.write_table(
        pa.table({"conversation_id": [ID_1, ID_2, ID_3], "status": ["closed"] * 3}), good
    )
    (directory / "truncated.parquet").write_bytes(good.getvalue()[: len(good.getvalue()) // 2])
    (directory / "parquet_named.csv").write_bytes(good.getvalue())
    (directory / "csv_named.parquet").write_bytes(f"conversation_id\n{ID_1}\n".encode())


def main(directory: Path = HERE) -> None:
    for name, content in text_files().items():
        (directory / name).write_bytes(content)
    (directory / "excel_renamed.csv").write_bytes(excel_workbook())
    parquet_files(directory)


if __name__ == "__main__":
    main()
