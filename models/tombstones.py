"""Tombstones: the memory of deletions, so a late event never resurrects a deleted entity.

What a tombstone is and how two claims on one entity merge (``widest``, and the statements
that do the same in SQL); ``models.unit_of_work`` reads and buries them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import Connection

from models.statements import greatest, insert_row, insert_rows, least
from models.tables import tombstones

ORGANIZATION: Final = "organization"
ORGANIZATION_MEMBERSHIP: Final = "organization_membership"
USER: Final = "user"
ROLE: Final = "role"
PERMISSION: Final = "permission"
ORGANIZATION_DOMAIN: Final = "organization_domain"

DELETED: Final = "deleted"
SUPERSEDED: Final = "superseded"


@dataclass(frozen=True)
class Tombstone:
    entity_type: str
    entity_id: str
    organization_id: str | None
    created_at: int | None
    deleted_at: int
    reason: str


def tombstone_of(row: Any) -> Tombstone:
    """The ``Tombstone`` of a ``tombstones`` row."""
    return Tombstone(
        entity_type=row.entity_type,
        entity_id=row.entity_id,
        organization_id=row.organization_id,
        created_at=row.created_at,
        deleted_at=row.deleted_at,
        reason=row.reason,
    )


def widest(stored: Tombstone | None, new: Tombstone) -> Tombstone:
    """What ``_burying`` leaves when it buries ``new`` over ``stored``."""
    if stored is None:
        return new
    created_at = [value for value in (stored.created_at, new.created_at) if value is not None]
    return Tombstone(
        entity_type=stored.entity_type,
        entity_id=stored.entity_id,
        organization_id=stored.organization_id,
        created_at=max(created_at) if created_at else None,
        deleted_at=min(stored.deleted_at, new.deleted_at),
        reason=min(stored.reason, new.reason),
    )


def tombstone_values(tombstone: Tombstone) -> dict[str, Any]:
    return {
        "entity_type": tombstone.entity_type,
        "entity_id": tombstone.entity_id,
        "organization_id": tombstone.organization_id,
        "created_at": tombstone.created_at,
        "deleted_at": tombstone.deleted_at,
        "reason": tombstone.reason,
        "synced_at": datetime.now(UTC),
    }


COLUMNS: Final = tuple(column.name for column in tombstones.columns)


def bury_many_statement(connection: Connection) -> Any:
    """Bury many tombstones (``insert_rows``), each merged into the one stored."""
    return _burying(connection, insert_rows(connection, tombstones, COLUMNS))


def bury_statement(connection: Connection) -> Any:
    """Bury one tombstone, merged into the one stored; returns the row it leaves."""
    statement = _burying(connection, insert_row(connection, tombstones, COLUMNS))
    return statement.returning(*tombstones.columns)


def _burying(connection: Connection, statement: Any) -> Any:
    """Insert the tombstone, or merge it into the one stored."""
    excluded = statement.excluded
    return statement.on_conflict_do_update(
        index_elements=[tombstones.c.entity_type, tombstones.c.entity_id],
        set_={
            "created_at": greatest(connection, tombstones.c.created_at, excluded.created_at),
            "deleted_at": least(connection, tombstones.c.deleted_at, excluded.deleted_at),
            # "deleted" sorts before "superseded": an explicit deletion outranks a supersession.
            "reason": least(connection, tombstones.c.reason, excluded.reason),
            "synced_at": excluded.synced_at,
        },
    )
