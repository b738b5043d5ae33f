"""The reads the mutation rules make: a tombstone, the membership holding an (organization,
user) pair, an organization's stored version. One by one, and for a whole batch at once (a few
hundred keys per query), which ``models.unit_of_work`` keeps and answers from."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import (
    Connection,
    Row,
    Select,
    Table,
    Text,
    TextClause,
    and_,
    any_,
    bindparam,
    cast,
    or_,
    select,
    text,
    tuple_,
)
from sqlalchemy.dialects import postgresql

from models.tables import organization_memberships, organizations, tombstones
from models.tombstones import Tombstone, tombstone_of

KEYS_PER_QUERY: Final = 500


@dataclass(frozen=True)
class Holder:
    """A membership holding an (organization, user) pair."""

    id: str
    created_at: int


_FIND = select(tombstones).where(
    tombstones.c.entity_type == bindparam("p_entity_type"),
    tombstones.c.entity_id == bindparam("p_entity_id"),
)


def find_tombstone(connection: Connection, entity: tuple[str, str]) -> Tombstone | None:
    """The tombstone of ``(entity_type, entity_id)``, if any."""
    row = connection.execute(
        _FIND, {"p_entity_type": entity[0], "p_entity_id": entity[1]}
    ).one_or_none()
    return None if row is None else tombstone_of(row)


_FIND_TWO = select(tombstones).where(
    or_(
        and_(
            tombstones.c.entity_type == bindparam("p_first_type"),
            tombstones.c.entity_id == bindparam("p_first_id"),
        ),
        and_(
            tombstones.c.entity_type == bindparam("p_second_type"),
            tombstones.c.entity_id == bindparam("p_second_id"),
        ),
    )
)


def find_two_tombstones(
    connection: Connection, first: tuple[str, str], second: tuple[str, str]
) -> tuple[Tombstone | None, Tombstone | None]:
    """``find_tombstone`` for two entities in one query."""
    parameters = {
        "p_first_type": first[0],
        "p_first_id": first[1],
        "p_second_type": second[0],
        "p_second_id": second[1],
    }
    found = {
        (row.entity_type, row.entity_id): tombstone_of(row)
        for row in connection.execute(_FIND_TWO, parameters)
    }
    return found.get(first), found.get(second)


_HOLDER = select(organization_memberships.c.id, organization_memberships.c.created_at).where(
    organization_memberships.c.organization_id == bindparam("p_organization_id"),
    organization_memberships.c.user_id == bindparam("p_user_id"),
    organization_memberships.c.id != bindparam("p_id"),
)


def find_holder(
    connection: Connection, organization_id: str, user_id: str, other_than: str
) -> Holder | None:
    """The membership, other than ``other_than``, holding (organization, user), if any."""
    row = connection.execute(
        _HOLDER,
        {"p_organization_id": organization_id, "p_user_id": user_id, "p_id": other_than},
    ).one_or_none()
    return None if row is None else Holder(row.id, row.created_at)


_TOMBSTONES_POSTGRESQL = text(
    "SELECT tombstones.* FROM tombstones JOIN unnest(CAST(:firsts AS text[]), "
    "CAST(:seconds AS text[])) AS wanted(entity_type, entity_id) USING (entity_type, entity_id)"
)
_TOMBSTONES = select(tombstones).where(
    tuple_(tombstones.c.entity_type, tombstones.c.entity_id).in_(
        bindparam("p_wanted", expanding=True)
    )
)


def tombstones_of(
    connection: Connection, entities: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], Tombstone | None]:
    """The tombstone (or None) of each ``(entity_type, entity_id)``."""
    wanted = sorted({entity for entity in entities if "\x00" not in entity[1]})
    found: dict[tuple[str, str], Tombstone | None] = dict.fromkeys(wanted)
    for row in _rows_for_pairs(connection, wanted, _TOMBSTONES_POSTGRESQL, _TOMBSTONES):
        found[(row.entity_type, row.entity_id)] = tombstone_of(row)
    return found


_HOLDERS_POSTGRESQL = text(
    "SELECT organization_id, user_id, id, created_at FROM organization_memberships "
    "JOIN unnest(CAST(:firsts AS text[]), CAST(:seconds AS text[])) "
    "AS wanted(organization_id, user_id) USING (organization_id, user_id)"
)
_HOLDERS = select(
    organization_memberships.c.organization_id,
    organization_memberships.c.user_id,
    organization_memberships.c.id,
    organization_memberships.c.created_at,
).where(
    tuple_(organization_memberships.c.organization_id, organization_memberships.c.user_id).in_(
        bindparam("p_wanted", expanding=True)
    )
)


def holders_of(
    connection: Connection, pairs: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], list[Holder]]:
    """The memberships holding each (organization, user) pair."""
    wanted = sorted({pair for pair in pairs if "\x00" not in pair[0] + pair[1]})
    found: dict[tuple[str, str], list[Holder]] = {pair: [] for pair in wanted}
    for row in _rows_for_pairs(connection, wanted, _HOLDERS_POSTGRESQL, _HOLDERS):
        found[(row.organization_id, row.user_id)].append(Holder(row.id, row.created_at))
    return found


_VERSIONS_POSTGRESQL = text(
    "SELECT id, updated_at FROM organizations WHERE id = ANY(CAST(:ids AS text[]))"
)
_VERSIONS = select(organizations.c.id, organizations.c.updated_at).where(
    organizations.c.id.in_(bindparam("p_ids", expanding=True))
)


def organization_versions_of(
    connection: Connection, organization_ids: Sequence[str]
) -> dict[str, tuple[int, ...]]:
    """The stored version (``(updated_at,)``) of each of these organizations that exists."""
    wanted = sorted({value for value in organization_ids if "\x00" not in value})
    found: dict[str, tuple[int, ...]] = {}
    for start in range(0, len(wanted), KEYS_PER_QUERY):
        chunk = wanted[start : start + KEYS_PER_QUERY]
        if connection.dialect.name == "postgresql":
            rows = connection.execute(_VERSIONS_POSTGRESQL, {"ids": chunk})
        else:
            rows = connection.execute(_VERSIONS, {"p_ids": chunk})
        found.update((row.id, (row.updated_at,)) for row in rows)
    return found


def stored_rows(
    connection: Connection, table: Table, ids: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """The stored rows (column → value) of these ids, of a table keyed by ``id``, a few
    hundred ids per query."""
    wanted = sorted({value for value in ids if "\x00" not in value})
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(wanted), KEYS_PER_QUERY):
        chunk = wanted[start : start + KEYS_PER_QUERY]
        if connection.dialect.name == "postgresql":
            statement = select(table).where(table.c.id == any_(cast(bindparam("p_ids"), _TEXTS)))
        else:
            statement = select(table).where(table.c.id.in_(bindparam("p_ids", expanding=True)))
        for row in connection.execute(statement, {"p_ids": chunk}).mappings():
            found[row["id"]] = dict(row)
    return found


_TEXTS: Final = postgresql.ARRAY(Text())


def _rows_for_pairs(
    connection: Connection,
    pairs: Sequence[tuple[str, str]],
    postgresql: TextClause,
    portable: Select[Any],
) -> Iterator[Row[Any]]:
    """The rows of many two-part keys, a few hundred per query: on PostgreSQL ``postgresql``,
    which joins ``unnest(:firsts, :seconds)`` (the same statement text for every batch, parsed
    and planned once), elsewhere ``portable``, a tuple ``IN`` over the expanding ``:p_wanted``."""
    for start in range(0, len(pairs), KEYS_PER_QUERY):
        chunk = pairs[start : start + KEYS_PER_QUERY]
        if connection.dialect.name == "postgresql":
            parameters = {"firsts": [a for a, _ in chunk], "seconds": [b for _, b in chunk]}
            yield from connection.execute(postgresql, parameters)
        else:
            yield from connection.execute(portable, {"p_wanted": list(chunk)})
