"""Tombstones: the memory of deletions, so a late event never resurrects a deleted entity."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from sqlalchemy import Connection, select

from models.database import greatest, insert_for, least
from models.tables import tombstones

ORGANIZATION: Final = "organization"
ORGANIZATION_MEMBERSHIP: Final = "organization_membership"
USER: Final = "user"

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


def find_tombstone(connection: Connection, entity_type: str, entity_id: str) -> Tombstone | None:
    row = connection.execute(
        select(tombstones).where(
            tombstones.c.entity_type == entity_type, tombstones.c.entity_id == entity_id
        )
    ).one_or_none()
    if row is None:
        return None
    return Tombstone(
        entity_type=row.entity_type,
        entity_id=row.entity_id,
        organization_id=row.organization_id,
        created_at=row.created_at,
        deleted_at=row.deleted_at,
        reason=row.reason,
    )


def bury(connection: Connection, tombstone: Tombstone) -> None:
    """Record a deletion; burying the same entity again keeps the widest claim.

    ``created_at`` marks which incarnation is dead (every membership created at or before it), so
    the stored value only ever grows; ``deleted_at`` keeps the earliest deletion seen, and an
    explicit deletion outranks a supersession.
    """
    statement = insert_for(connection, tombstones).values(
        entity_type=tombstone.entity_type,
        entity_id=tombstone.entity_id,
        organization_id=tombstone.organization_id,
        created_at=tombstone.created_at,
        deleted_at=tombstone.deleted_at,
        reason=tombstone.reason,
        synced_at=datetime.now(UTC),
    )
    excluded = statement.excluded
    statement = statement.on_conflict_do_update(
        index_elements=[tombstones.c.entity_type, tombstones.c.entity_id],
        set_={
            "created_at": greatest(connection, tombstones.c.created_at, excluded.created_at),
            "deleted_at": least(connection, tombstones.c.deleted_at, excluded.deleted_at),
            # "deleted" sorts before "superseded": an explicit deletion outranks a supersession.
            "reason": least(connection, tombstones.c.reason, excluded.reason),
            "synced_at": excluded.synced_at,
        },
    )
    connection.execute(statement)
