"""Tombstones: the memory of deletions, so a late event never resurrects a deleted entity."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import Connection, and_, bindparam, or_, select

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


_FIND = select(tombstones).where(
    tombstones.c.entity_type == bindparam("p_entity_type"),
    tombstones.c.entity_id == bindparam("p_entity_id"),
)


def find_tombstone(connection: Connection, entity_type: str, entity_id: str) -> Tombstone | None:
    row = connection.execute(
        _FIND, {"p_entity_type": entity_type, "p_entity_id": entity_id}
    ).one_or_none()
    if row is None:
        return None
    return _tombstone(row)


def _tombstone(row: Any) -> Tombstone:
    return Tombstone(
        entity_type=row.entity_type,
        entity_id=row.entity_id,
        organization_id=row.organization_id,
        created_at=row.created_at,
        deleted_at=row.deleted_at,
        reason=row.reason,
    )


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
    """``find_tombstone`` for two entities (``(entity_type, entity_id)``) in one query."""
    found = {
        (row.entity_type, row.entity_id): _tombstone(row)
        for row in connection.execute(
            _FIND_TWO,
            {
                "p_first_type": first[0],
                "p_first_id": first[1],
                "p_second_type": second[0],
                "p_second_id": second[1],
            },
        )
    }
    return found.get(first), found.get(second)


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
