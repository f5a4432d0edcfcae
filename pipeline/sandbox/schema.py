"""The `conversation` table as Mateo documents it: columns, their types, and input parsing.

Values are parsed the way PostgreSQL parses them, so a filter or body value the real database
would refuse is refused here with the same code (22P02 and friends).
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from pipeline.core.models import CONVERSATION_COLUMNS
from pipeline.sandbox.errors import ApiError

TABLE = "conversation"

COLUMNS: tuple[str, ...] = CONVERSATION_COLUMNS
COLUMN_SET = frozenset(COLUMNS)

UUID_COLUMNS = frozenset(
    {
        "id",
        "organisation_id",
        "assignee_id",
        "channel_id",
        "contact_id",
        "inbox_id",
        "latest_message_id",
        "latest_inbound_message_id",
    }
)
TIMESTAMP_COLUMNS = frozenset(
    {"created_at", "updated_at", "latest_message_created_at", "latest_inbound_message_created_at"}
)
BOOLEAN_COLUMNS = frozenset({"unread", "is_spam"})
JSON_COLUMNS = frozenset({"tags"})
TEXT_COLUMNS = frozenset({"subject", "external_id"})

STATUSES: tuple[str, ...] = ("open", "closed", "archived")
CHANNEL_TYPES: tuple[str, ...] = (
    "email",
    "sms",
    "whatsapp",
    "instagram",
    "facebook",
    "google_business_messaging",
    "postal",
)
#: Enum columns: their PostgreSQL type name and their values in declaration order.
ENUM_COLUMNS: dict[str, tuple[str, tuple[str, ...]]] = {
    "status": ("conversation_status", STATUSES),
    "channel_type": ("channel_type", CHANNEL_TYPES),
}

#: What a PATCH body may set, as Mateo documents it.
WRITABLE_COLUMNS: tuple[str, ...] = ("inbox_id", "assignee_id", "status")
#: Column defaults of the writable columns; the others have none, so their default is NULL.
WRITABLE_DEFAULTS: dict[str, str] = {"status": "open"}
NOT_NULL_COLUMNS = frozenset(
    {
        "id",
        "created_at",
        "updated_at",
        "organisation_id",
        "status",
        "channel_id",
        "channel_type",
        "is_spam",
        "inbox_id",
    }
)

# PostgreSQL accepts upper case, braces, and a hyphen after any group of four hex digits.
_PG_UUID = re.compile(r"^(\{)?(?:[0-9a-fA-F]{4}-?){7}[0-9a-fA-F]{4}(?(1)\})$")
_CANONICAL_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_TRUE = frozenset({"t", "true", "y", "yes", "on", "1"})
_FALSE = frozenset({"f", "false", "n", "no", "off", "0"})


def parse_uuid(text: str) -> str:
    """The canonical form of a uuid literal, or 400 22P02 as PostgreSQL answers."""
    if _CANONICAL_UUID.match(text):
        return text
    if not _PG_UUID.match(text):
        raise ApiError(400, "22P02", f'invalid input syntax for type uuid: "{text}"')
    digits = text.strip("{}").replace("-", "").lower()
    return f"{digits[:8]}-{digits[8:12]}-{digits[12:16]}-{digits[16:20]}-{digits[20:]}"


def parse_boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ApiError(400, "22P02", f'invalid input syntax for type boolean: "{text}"')


def parse_enum(column: str, text: str) -> str:
    type_name, values = ENUM_COLUMNS[column]
    if text not in values:
        raise ApiError(400, "22P02", f'invalid input value for enum {type_name}: "{text}"')
    return text


@lru_cache(maxsize=65536)
def timestamp_value(text: str) -> datetime:
    """A stored or literal timestamp as an aware datetime (naive literals are UTC)."""
    moment = datetime.fromisoformat(text.strip().replace(" ", "T", 1))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment


def parse_timestamp(text: str) -> datetime:
    try:
        return timestamp_value(text)
    except ValueError:
        raise ApiError(
            400, "22007", f'invalid input syntax for type timestamp with time zone: "{text}"'
        ) from None


def parse_json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        raise ApiError(
            400,
            "22P02",
            "invalid input syntax for type json",
            details=f'Token "{text}" is invalid.',
        ) from None


def format_timestamp(moment: datetime) -> str:
    """How PostgREST prints a timestamptz in JSON."""
    return moment.astimezone(UTC).isoformat()


def undefined_column(name: str) -> ApiError:
    return ApiError(400, "42703", f"column {TABLE}.{name} does not exist")
