"""Write sample_data/reassign.csv and reassign.parquet: the demo input for `run --sandbox`.

About 100 rows against the sandbox seed in sample_data/ that show every outcome:
- updated: four target combinations shared by many rows, so grouping shows (one request per
  combination and batch), some written with upper-case or spaced uuids and NULL to show
  normalisation;
- not_found: valid uuids that are not in the seed;
- invalid: a bad uuid, a bad status, null for inbox_id, nothing to change, and one conversation
  listed twice with different targets;
- one conversation listed twice with the same target (sent once, reported twice);
- rejected: a move to an inbox that does not exist (the API answers 409).

Re-run after the seed changes (the output is the same for the same seed):
    python tests/data/make_reassign.py
"""

from __future__ import annotations

import csv
import random
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SAMPLE = Path(__file__).resolve().parents[2] / "sample_data"
COLUMNS = ("conversation_id", "inbox_id", "assignee_id", "status", "note")


def _read(name: str) -> list[dict[str, str]]:
    with (SAMPLE / name).open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def build_rows(rng: random.Random) -> list[dict[str, str]]:
    conversations = _read("conversations.csv")
    inboxes = {row["name"]: row["id"] for row in _read("inboxes.csv")}
    agents = {row["name"]: row["id"] for row in _read("agents.csv")}
    known_ids = {row["id"] for row in conversations}
    unused = list(conversations)
    rng.shuffle(unused)

    def take(count: int, **criteria: str) -> list[str]:
        chosen = [
            row for row in unused if all(row[key] == value for key, value in criteria.items())
        ]
        chosen = chosen[:count]
        if len(chosen) < count:
            raise SystemExit(f"the seed has too few conversations matching {criteria}")
        for row in chosen:
            unused.remove(row)
        return [row["id"] for row in chosen]

    def row(
        conversation_id: str, inbox: str = "", assignee: str = "", status: str = "", note: str = ""
    ) -> dict[str, str]:
        return dict(zip(COLUMNS, (conversation_id, inbox, assignee, status, note), strict=True))

    rows: list[dict[str, str]] = []
    # Four target combinations, many rows each: one PATCH per combination (and per 50 ids).
    for index, conversation_id in enumerate(take(30, inbox_id=inboxes["Support"], status="open")):
        inbox = inboxes["Billing"]
        if index % 10 == 3:
            conversation_id, inbox = conversation_id.upper(), f"  {inbox.upper()} "
        rows.append(
            row(conversation_id, inbox, agents["Jonas Weber"], note="billing backlog to Jonas")
        )
    for conversation_id in take(26, status="open"):
        rows.append(row(conversation_id, status="closed", note="close stale"))
    for index, conversation_id in enumerate(take(18, inbox_id=inboxes["Spam"])):
        nobody = ("NULL", " null ", "Null")[index % 3]
        rows.append(
            row(
                conversation_id,
                inboxes["Archive"],
                nobody,
                "Archived",
                "spam to archive, unassigned",
            )
        )
    for conversation_id in take(10, status="closed"):
        rows.append(row(conversation_id, "", agents["Clara Jensen"], "OPEN", "reopen for Clara"))

    # One conversation listed twice with the same target: sent once, both rows reported.
    rows[40]["note"] = "close stale, listed twice: sent once"
    rows.append(dict(rows[40]))
    # Valid uuids that are not in the seed: not_found, though grouped with rows that exist.
    for _ in range(3):
        while (unknown := str(uuid.UUID(int=rng.getrandbits(128), version=4))) in known_ids:
            pass
        rows.append(row(unknown, status="closed", note="unknown id: not_found"))
    # A move to an inbox that does not exist: the API refuses it (409), the rows are rejected.
    missing_inbox = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    for conversation_id in take(2):
        rows.append(row(conversation_id, missing_inbox, note="inbox does not exist: rejected"))
    # Invalid rows: never sent.
    bad_uuid, bad_status, null_inbox, nothing, conflicting = take(5)
    rows += [
        row(bad_uuid[:-2], status="closed", note="invalid: not a uuid"),
        row(bad_status, status="done", note="invalid: unknown status"),
        row(null_inbox, "null", note="invalid: inbox_id cannot be null"),
        row(nothing, note="invalid: nothing to change"),
        row(conflicting, status="closed", note="invalid: listed twice, different targets"),
        row(conflicting, status="open", note="invalid: listed twice, different targets"),
    ]
    rng.shuffle(rows)
    return rows


def main() -> None:
    rows = build_rows(random.Random(20240611))
    with (SAMPLE / "reassign.csv").open("w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    table = pa.table(
        {column: pa.array([each[column] for each in rows], pa.string()) for column in COLUMNS}
    )
    pq.write_table(table, SAMPLE / "reassign.parquet")
    print(f"wrote {len(rows)} rows to {SAMPLE / 'reassign.csv'} and reassign.parquet")


if __name__ == "__main__":
    main()
