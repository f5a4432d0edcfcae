"""Which column of an input each field is read from: the field names a file's header may use,
`--map FIELD=COLUMN`, and the warning for a column that looks like a field but is not read.

Every input (CSV, Parquet, a sheet of a workbook, a DataFrame) has its header judged here, so a
missing or ambiguous column is explained the same way whatever the file's format.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pipeline.core.errors import InputError
from pipeline.core.models import FIELDS

#: The field naming the conversation a row changes; with FIELDS, what `column_map` may rename.
ID_FIELD = "conversation_id"
#: Optional columns of the values a row must still hold to be changed (undo files use them).
EXPECT_FIELDS: tuple[str, ...] = tuple(f"expect_{field}" for field in FIELDS)
MAPPABLE_FIELDS: tuple[str, ...] = (ID_FIELD, *FIELDS, *EXPECT_FIELDS)


def normalise_name(column: str) -> str:
    return column.strip().lstrip("\ufeff").strip().casefold()


def resolve_columns(
    header: Sequence[str], column_map: Mapping[str, str], name: str
) -> dict[str, int]:
    """field -> index of the column it is read from; InputError when that is not clear-cut."""
    positions: dict[str, list[int]] = {}
    for index, column in enumerate(header):
        positions.setdefault(normalise_name(column), []).append(index)

    indexes: dict[str, int] = {}
    for field in MAPPABLE_FIELDS:
        if field in column_map:
            wanted = normalise_name(column_map[field])
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


#: Names users give target columns that are not the names mateo-bulk reads.
_TARGET_SYNONYMS = {
    "inbox": "inbox_id",
    "agent": "assignee_id",
    "agent_id": "assignee_id",
    "assignee": "assignee_id",
    "assigned_to": "assignee_id",
    "owner": "assignee_id",
    "owner_id": "assignee_id",
    "state": "status",
}


def look_alike_columns(header: Sequence[str], indexes: Mapping[str, int]) -> list[str]:
    """A warning for each column the run does not read whose name looks like a field it would
    read (`inbox` for `inbox_id`, `stauts`): its values would be ignored without a word."""
    import difflib

    read = set(indexes.values())
    unread_fields = [field for field in MAPPABLE_FIELDS if field not in indexes]
    warnings = []
    for position, column in enumerate(header):
        if position in read:
            continue
        name = normalise_name(column).replace(" ", "_").replace("-", "_")
        meant = _TARGET_SYNONYMS.get(name) or next(
            iter(difflib.get_close_matches(name, unread_fields, n=1, cutoff=0.75)), None
        )
        if meant is None or meant in indexes:
            continue
        warnings.append(
            f"column {column!r} is not read: its values are ignored. If it holds {meant} "
            f"values, rename it {meant} or pass --map {meant}={column}"
        )
    return warnings


def _list_columns(header: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(repr(column[:40]) for column in header[:limit])
    return shown + (f" and {len(header) - limit} more" if len(header) > limit else "")
