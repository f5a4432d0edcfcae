"""The sandbox's conversations, inboxes and agents: read from CSV or generated deterministically.

`sample_data/` is made from `generate_dataset(300)` (`python -m pipeline.sandbox.sample_data`),
so the files and the generator hold the same rows.
"""

from __future__ import annotations

import csv
import json
import random
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pipeline.core.errors import InputError
from pipeline.sandbox import schema

Row = dict[str, Any]

#: The seed `sample_data/` was generated from, and its size.
SAMPLE_SEED = 20240501
SAMPLE_SIZE = 300

_INBOX_NAMES = ("Support", "Billing", "Sales", "Spam", "Archive")
#: How conversations spread over the inboxes above; Archive stays empty on purpose, so a
#: move into an empty inbox can be tested.
_INBOX_WEIGHTS = (50, 20, 18, 12, 0)
_AGENT_NAMES = (
    "Lena Hoffmann",
    "Jonas Weber",
    "Amira Haddad",
    "Tobias Brandt",
    "Sofia Rossi",
    "Mehmet Yilmaz",
    "Clara Jensen",
    "Felix Wagner",
)
_SUBJECTS = (
    "Where is my order #{n}?",
    "Refund for order #{n}",
    "Invoice {n} is wrong",
    "Cannot log in to my account",
    "Change of delivery address",
    "Question about your opening hours",
    "Appointment on {day}",
    "Damaged parcel (order #{n})",
    "Cancel my subscription",
    "Price quote for {n} units",
    "Payment failed",
    "Do you ship to Austria?",
    "Feedback on my last visit",
    "Voucher code not working",
    "Re: Your enquiry",
    "Partnership request",
)
_SPAM_SUBJECTS = ("You have won a prize!!!", "Cheap SEO services", "Crypto opportunity")
_CHANNEL_WEIGHTS = {
    "email": 45,
    "whatsapp": 25,
    "sms": 10,
    "instagram": 8,
    "facebook": 7,
    "google_business_messaging": 4,
    "postal": 1,
}
_CHANNEL_TYPES = tuple(_CHANNEL_WEIGHTS)
_CHANNEL_WEIGHT_VALUES = tuple(_CHANNEL_WEIGHTS.values())
_TAG_CHOICES: tuple[dict[str, Any], ...] = (
    {},
    {},
    {},
    {"vip": True},
    {"priority": "high"},
    {"language": "de"},
    {"language": "en", "priority": "low"},
)


@dataclass(frozen=True, slots=True)
class Dataset:
    """Conversations plus the inboxes and agents their foreign keys may point to."""

    rows: tuple[Row, ...]
    inboxes: tuple[tuple[str, str], ...]
    agents: tuple[tuple[str, str], ...]

    @property
    def inbox_ids(self) -> frozenset[str]:
        return frozenset(inbox_id for inbox_id, _ in self.inboxes)

    @property
    def agent_ids(self) -> frozenset[str]:
        return frozenset(agent_id for agent_id, _ in self.agents)


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _named_ids(rng: random.Random, names: Iterable[str]) -> tuple[tuple[str, str], ...]:
    return tuple((_uuid(rng), name) for name in names)


def generate_dataset(n: int, seed: int = SAMPLE_SEED) -> Dataset:
    """`n` realistic conversations over 5 inboxes and 8 agents, the same for the same seed."""
    if n < 0:
        raise ValueError("the number of rows must not be negative")
    rng = random.Random(seed)
    inboxes = _named_ids(rng, _INBOX_NAMES)
    agents = _named_ids(rng, _AGENT_NAMES)
    organisation_id = _uuid(rng)
    channels = {kind: _uuid(rng) for kind in _CHANNEL_WEIGHTS}
    start = datetime(2025, 1, 6, 8, 0, tzinfo=UTC)
    rows = []
    for _ in range(n):
        inbox_id, inbox_name = rng.choices(inboxes, weights=_INBOX_WEIGHTS)[0]
        is_spam = inbox_name == "Spam"
        channel_type = rng.choices(_CHANNEL_TYPES, weights=_CHANNEL_WEIGHT_VALUES)[0]
        created = start + timedelta(seconds=rng.randrange(0, 330 * 86400))
        created = created.replace(microsecond=rng.randrange(0, 1000) * 1000)
        latest = created + timedelta(seconds=rng.randrange(0, 20 * 86400))
        inbound = latest - timedelta(seconds=rng.randrange(0, 3 * 86400))
        inbound = max(inbound, created)
        updated = latest + timedelta(seconds=rng.randrange(0, 3600))
        status = rng.choices(schema.STATUSES, weights=(45, 40, 15))[0]
        assignee = None if rng.random() < 0.25 or is_spam else rng.choice(agents)[0]
        has_messages = rng.random() > 0.03
        if is_spam:
            subject: str | None = rng.choice(_SPAM_SUBJECTS)
        elif rng.random() < 0.04:
            subject = None
        else:
            subject = rng.choice(_SUBJECTS).format(
                n=rng.randrange(10000, 99999),
                day=(created + timedelta(days=rng.randrange(1, 14))).strftime("%d.%m."),
            )
        external_id = (
            f"<{rng.getrandbits(64):016x}@mail.example.com>"
            if channel_type == "email"
            else (f"wamid.{rng.getrandbits(80):020X}" if channel_type == "whatsapp" else None)
        )
        rows.append(
            {
                "id": _uuid(rng),
                "created_at": schema.format_timestamp(created),
                "updated_at": schema.format_timestamp(updated),
                "organisation_id": organisation_id,
                "subject": subject,
                "status": "closed" if is_spam and status == "open" else status,
                "assignee_id": assignee,
                "unread": rng.random() < 0.3,
                "channel_id": channels[channel_type],
                "channel_type": channel_type,
                "contact_id": _uuid(rng) if rng.random() > 0.02 else None,
                "external_id": external_id,
                "tags": dict(rng.choice(_TAG_CHOICES)) if rng.random() > 0.05 else None,
                "is_spam": is_spam,
                "inbox_id": inbox_id,
                "latest_message_id": _uuid(rng) if has_messages else None,
                "latest_inbound_message_id": _uuid(rng) if has_messages else None,
                "latest_message_created_at": (
                    schema.format_timestamp(latest) if has_messages else None
                ),
                "latest_inbound_message_created_at": (
                    schema.format_timestamp(inbound) if has_messages else None
                ),
            }
        )
    return Dataset(rows=tuple(rows), inboxes=inboxes, agents=agents)


def generate_rows(n: int, seed: int = SAMPLE_SEED) -> list[Row]:
    """The conversations of `generate_dataset(n, seed)`."""
    return [dict(row) for row in generate_dataset(n, seed).rows]


def dataset_from_rows(rows: Iterable[Mapping[str, Any]]) -> Dataset:
    """A dataset whose known inboxes and agents are the ones the rows (and the sample) use."""
    sample = generate_dataset(0)
    copied = tuple(_complete(dict(row), sample.inboxes[0][0]) for row in rows)
    inboxes = dict(sample.inboxes)
    agents = dict(sample.agents)
    for row in copied:
        inboxes.setdefault(row["inbox_id"], "Inbox")
        if row["assignee_id"] is not None:
            agents.setdefault(row["assignee_id"], "Agent")
    return Dataset(rows=copied, inboxes=tuple(inboxes.items()), agents=tuple(agents.items()))


def _complete(row: Row, default_inbox: str) -> Row:
    """Fill the columns a hand-written test row left out, so every row has every column."""
    if "id" not in row:
        raise ValueError("every row needs an id")
    row["id"] = schema.parse_uuid(str(row["id"]))
    now = schema.format_timestamp(datetime(2025, 1, 6, 8, 0, tzinfo=UTC))
    defaults: dict[str, Any] = {
        "created_at": now,
        "updated_at": now,
        "organisation_id": "00000000-0000-4000-8000-000000000001",
        "status": "open",
        "channel_id": "00000000-0000-4000-8000-000000000002",
        "channel_type": "email",
        "is_spam": False,
        "inbox_id": default_inbox,
    }
    for column in schema.COLUMNS:
        if column not in row:
            row[column] = defaults.get(column)
    unknown = set(row) - schema.COLUMN_SET
    if unknown:
        raise ValueError(f"unknown column(s) in a row: {', '.join(sorted(unknown))}")
    return row


# --- CSV ---------------------------------------------------------------------------------------


def _cell(column: str, value: Any) -> str:
    if value is None:
        return ""
    if column in schema.JSON_COLUMNS:
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _value(column: str, cell: str, where: str) -> Any:
    if cell == "":
        return None
    try:
        if column in schema.JSON_COLUMNS:
            return json.loads(cell)
        if column in schema.BOOLEAN_COLUMNS:
            return schema.parse_boolean(cell)
        if column in schema.UUID_COLUMNS:
            return schema.parse_uuid(cell)
        if column in schema.TIMESTAMP_COLUMNS:
            return schema.format_timestamp(schema.timestamp_value(cell))
        if column in schema.ENUM_COLUMNS:
            return schema.parse_enum(column, cell)
    except Exception as error:
        raise InputError(f"{where}: bad value {cell!r} in column {column}: {error}") from None
    return cell


def write_dataset(dataset: Dataset, directory: Path) -> None:
    """Write conversations.csv, inboxes.csv and agents.csv into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "conversations.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(schema.COLUMNS)
        for row in dataset.rows:
            writer.writerow([_cell(column, row[column]) for column in schema.COLUMNS])
    for name, pairs in (("inboxes.csv", dataset.inboxes), ("agents.csv", dataset.agents)):
        with (directory / name).open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(("id", "name"))
            writer.writerows(pairs)


def _read_pairs(path: Path) -> tuple[tuple[str, str], ...]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or not {"id", "name"} <= set(reader.fieldnames):
            raise InputError(f"{path}: expected the columns id,name")
        pairs = []
        for line, record in enumerate(reader, start=2):
            try:
                pairs.append((schema.parse_uuid(record["id"]), record["name"]))
            except Exception:
                raise InputError(f"{path}, line {line}: not a uuid: {record['id']!r}") from None
        return tuple(pairs)


def load_seed(path: str | Path) -> Dataset:
    """Read conversations from a CSV with the table's columns (empty cell = null).

    Known inboxes and agents come from `inboxes.csv` and `agents.csv` next to it when present,
    otherwise from the ids the conversations use.
    """
    path = Path(path)
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as error:
        raise InputError(f"cannot read the seed file {path}: {error.strerror}") from None
    with handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [column for column in schema.COLUMNS if column not in header]
        if missing:
            raise InputError(f"{path}: missing column(s) {', '.join(missing)}")
        rows = []
        for line, record in enumerate(reader, start=2):
            where = f"{path}, line {line}"
            rows.append(
                {column: _value(column, record[column], where) for column in schema.COLUMNS}
            )
    for line, row in enumerate(rows, start=2):
        if row["id"] is None:
            raise InputError(f"{path}, line {line}: the id is empty")
    inbox_file = path.with_name("inboxes.csv")
    agent_file = path.with_name("agents.csv")
    inboxes = _read_pairs(inbox_file) if inbox_file.exists() else ()
    agents = _read_pairs(agent_file) if agent_file.exists() else ()
    known_inboxes = dict(inboxes)
    known_agents = dict(agents)
    if not inbox_file.exists():
        for row in rows:
            known_inboxes.setdefault(row["inbox_id"], "Inbox")
    if not agent_file.exists():
        for row in rows:
            if row["assignee_id"] is not None:
                known_agents.setdefault(row["assignee_id"], "Agent")
    return Dataset(
        rows=tuple(rows),
        inboxes=tuple(known_inboxes.items()),
        agents=tuple(known_agents.items()),
    )


def default_seed_candidates() -> list[Path]:
    """Where `sample_data/conversations.csv` is looked for: the working directory, the repo."""
    repo = Path(__file__).resolve().parents[2]
    candidates = [
        Path.cwd() / "sample_data" / "conversations.csv",
        repo / "sample_data" / "conversations.csv",
    ]
    unique: list[Path] = []
    for candidate in candidates:
        if candidate not in unique:
            unique.append(candidate)
    return unique


def find_default_seed() -> Path | None:
    for candidate in default_seed_candidates():
        if candidate.is_file():
            return candidate
    return None
