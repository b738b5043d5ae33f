"""Tombstones: the memory of deletions, so a late event never resurrects a deleted entity."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import Connection, and_, bindparam, or_, select, text, tuple_

from models.database import (
    bound,
    cached_statement,
    greatest,
    insert_row,
    insert_rows,
    least,
)
from models.known import MISSING, TOMBSTONES, note, recall, remembering, rows_for_pairs
from models.queued import queue_row, write_queued
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
    known = recall(connection, TOMBSTONES, (entity_type, entity_id))
    if known is not MISSING:
        return known  # type: ignore[no-any-return]
    write_queued(connection, tombstones.name)
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
    first_known = recall(connection, TOMBSTONES, first)
    second_known = recall(connection, TOMBSTONES, second)
    if first_known is not MISSING and second_known is not MISSING:
        return first_known, second_known
    write_queued(connection, tombstones.name)
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


_KNOWN_POSTGRESQL = text(
    "SELECT tombstones.* FROM tombstones JOIN unnest(CAST(:firsts AS text[]), "
    "CAST(:seconds AS text[])) AS wanted(entity_type, entity_id) USING (entity_type, entity_id)"
)
_KNOWN = select(tombstones).where(
    tuple_(tombstones.c.entity_type, tombstones.c.entity_id).in_(
        bindparam("p_wanted", expanding=True)
    )
)


@contextmanager
def knowing_tombstones(
    connection: Connection, entities: Iterable[tuple[str, str]]
) -> Iterator[None]:
    """Read the tombstones of these ``(entity_type, entity_id)`` at once, for the lookups of
    the mutations in this block (``models.known``); call it holding their locks."""
    wanted = sorted({entity for entity in entities if "\x00" not in entity[1]})
    known: dict[tuple[str, str], Tombstone | None] = dict.fromkeys(wanted)
    for row in rows_for_pairs(connection, wanted, _KNOWN_POSTGRESQL, _KNOWN):
        known[(row.entity_type, row.entity_id)] = _tombstone(row)
    with remembering(connection, TOMBSTONES, known):
        yield


def bury(connection: Connection, tombstone: Tombstone) -> None:
    """Record a deletion; burying the same entity again keeps the widest claim.

    ``created_at`` marks which incarnation is dead (every membership created at or before it), so
    the stored value only ever grows; ``deleted_at`` keeps the earliest deletion seen, and an
    explicit deletion outranks a supersession.

    In a batch that knows the stored tombstone (``knowing_tombstones``), the merge is worked out
    here and the row queued (``models.queued``): a deletion then costs no round trip of its own.
    """
    key = (tombstone.entity_type, tombstone.entity_id)
    known = recall(connection, TOMBSTONES, key)
    if known is not MISSING:
        merged = widest(known, tombstone)
        many = ("bury_many", _bury_many_statement)
        if queue_row(connection, tombstones.name, key, None, _values(merged), many):
            note(connection, TOMBSTONES, key, merged)
            return
    statement = cached_statement(connection, "bury", _bury_returning_statement)
    buried = connection.execute(statement, bound(_values(tombstone))).one()
    # The batch's later lookups of this entity read what the statement left, not the database.
    note(connection, TOMBSTONES, key, _tombstone(buried))


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


def _values(tombstone: Tombstone) -> dict[str, Any]:
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


def _bury_many_statement(connection: Connection) -> Any:
    return _burying(connection, insert_rows(connection, tombstones, COLUMNS))


def _bury_returning_statement(connection: Connection) -> Any:
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
