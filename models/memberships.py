"""Membership mutations: versioned upsert, supersession of a replaced membership, tombstoned delete.

A membership's version is the pair (``created_at``, ``updated_at``): ``created_at`` tells its
incarnations apart (a user removed and re-added), ``updated_at`` orders changes within one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, and_, bindparam, delete, or_, select, text, tuple_

from models.database import (
    bound,
    cached_statement,
    insert_row,
    insert_rows,
    lock_organization,
    lock_user,
)
from models.known import (
    HOLDERS,
    MISSING,
    forget,
    forget_matching,
    recall,
    remembering,
    rows_for_pairs,
)
from models.organizations import OrganizationSnapshot, write_organization
from models.queued import delete_by_key, drop_queued, queue_row, write_queued
from models.tables import organization_memberships, organizations
from models.tombstones import (
    DELETED,
    ORGANIZATION,
    ORGANIZATION_MEMBERSHIP,
    SUPERSEDED,
    USER,
    Tombstone,
    bury,
    find_tombstone,
    find_two_tombstones,
)


@dataclass(frozen=True)
class MembershipSnapshot:
    """A membership as Clerk described it, with the organization snapshot it carried."""

    id: str
    organization: OrganizationSnapshot
    user_id: str
    role: str
    permissions: list[str]
    identifier: str | None
    first_name: str | None
    last_name: str | None
    image_url: str | None
    public_metadata: dict[str, Any]
    created_at: int
    updated_at: int


_HOLDER = select(organization_memberships.c.id, organization_memberships.c.created_at).where(
    organization_memberships.c.organization_id == bindparam("p_organization_id"),
    organization_memberships.c.user_id == bindparam("p_user_id"),
    organization_memberships.c.id != bindparam("p_id"),
)
"""Another membership id holding the same (organization, user)."""


def upsert_membership(connection: Connection, snapshot: MembershipSnapshot) -> bool:
    """Apply a created/updated membership; returns whether the membership row was written.

    The organization is created (or advanced) from the nested snapshot first, which absorbs a
    membership that arrives before its organization. If another membership id holds the same
    (organization, user), the one created later wins and the loser is tombstoned, so its late
    events can never bring it back. A deleted (tombstoned) user's memberships are ignored; the
    user lock, taken after the organization lock, orders this check against ``delete_user``.
    """
    organization_id = snapshot.organization.id
    lock_organization(connection, organization_id)
    if find_tombstone(connection, ORGANIZATION, organization_id) is not None:
        return False
    write_organization(connection, snapshot.organization)
    lock_user(connection, snapshot.user_id)
    user_tombstone, tombstone = find_two_tombstones(
        connection, (USER, snapshot.user_id), (ORGANIZATION_MEMBERSHIP, snapshot.id)
    )
    if user_tombstone is not None:
        return False
    if tombstone is not None and (tombstone.created_at or 0) >= snapshot.created_at:
        return False

    holder = _holder(connection, organization_id, snapshot.user_id, snapshot.id)
    if holder is not None:
        if (holder.created_at, holder.id) > (snapshot.created_at, snapshot.id):
            _supersede(
                connection, organization_id, snapshot.id, snapshot.created_at, holder.created_at
            )
            return False
        _supersede(connection, organization_id, holder.id, holder.created_at, snapshot.created_at)
        forget(connection, HOLDERS, (organization_id, snapshot.user_id))
        drop_queued(connection, organization_memberships.name, lambda row: row["id"] == holder.id)
        connection.execute(
            delete(organization_memberships).where(organization_memberships.c.id == holder.id)
        )

    values = {
        "id": snapshot.id,
        "organization_id": organization_id,
        "user_id": snapshot.user_id,
        "role": snapshot.role,
        "permissions": snapshot.permissions,
        "identifier": snapshot.identifier,
        "first_name": snapshot.first_name,
        "last_name": snapshot.last_name,
        "image_url": snapshot.image_url,
        "public_metadata": snapshot.public_metadata,
        "created_at": snapshot.created_at,
        "updated_at": snapshot.updated_at,
        "synced_at": datetime.now(UTC),
    }
    written = queue_row(
        connection,
        organization_memberships.name,
        snapshot.id,
        (snapshot.created_at, snapshot.updated_at),
        values,
        ("upsert_memberships", _upsert_many_statement),
        requires=(organizations.name,),
    )
    if written is None:
        statement = cached_statement(connection, "upsert_membership", _upsert_statement)
        written = connection.execute(statement, bound(values)).first() is not None
    if written:
        # The row now holds this pair, and no longer the pair it held (should it have moved).
        pair = (organization_id, snapshot.user_id)
        forget_matching(
            connection,
            HOLDERS,
            lambda key, holders: key == pair or any(h.id == snapshot.id for h in holders),
        )
    return written


@dataclass(frozen=True)
class Holder:
    id: str
    created_at: int


def _holder(connection: Connection, organization_id: str, user_id: str, own_id: str) -> Any:
    """Another membership id holding the same (organization, user), if any."""
    known = recall(connection, HOLDERS, (organization_id, user_id))
    if known is not MISSING:
        others = [holder for holder in known if holder.id != own_id]
        if len(others) <= 1:
            return others[0] if others else None
    write_queued(connection, organization_memberships.name)
    return connection.execute(
        _HOLDER,
        {"p_organization_id": organization_id, "p_user_id": user_id, "p_id": own_id},
    ).one_or_none()


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


@contextmanager
def knowing_holders(connection: Connection, pairs: Iterable[tuple[str, str]]) -> Iterator[None]:
    """Read the memberships holding these (organization, user) pairs at once, for the holder
    lookups of the mutations in this block (``models.known``); call it holding their locks."""
    wanted = sorted({pair for pair in pairs if "\x00" not in pair[0] + pair[1]})
    known: dict[tuple[str, str], list[Holder]] = {pair: [] for pair in wanted}
    for row in rows_for_pairs(connection, wanted, _HOLDERS_POSTGRESQL, _HOLDERS):
        known[(row.organization_id, row.user_id)].append(Holder(row.id, row.created_at))
    with remembering(connection, HOLDERS, known):
        yield


COLUMNS = tuple(column.name for column in organization_memberships.columns)


def _upsert_many_statement(connection: Connection) -> Any:
    return _upserting(insert_rows(connection, organization_memberships, COLUMNS))


def _upsert_statement(connection: Connection) -> Any:
    """``_upsert_many_statement`` for one row, saying whether it was written."""
    # RETURNING, not rowcount: psycopg reports -1 for INSERT ... ON CONFLICT DO UPDATE.
    statement = _upserting(insert_row(connection, organization_memberships, COLUMNS))
    return statement.returning(organization_memberships.c.id)


def _upserting(statement: Any) -> Any:
    """Insert, or overwrite a row holding an older version (``created_at``, ``updated_at``)."""
    incoming = statement.excluded
    current = organization_memberships.c
    return statement.on_conflict_do_update(
        index_elements=[current.id],
        set_={name: incoming[name] for name in COLUMNS if name != "id"},
        where=or_(
            current.created_at < incoming.created_at,
            and_(
                current.created_at == incoming.created_at, current.updated_at < incoming.updated_at
            ),
        ),
    )


def delete_membership(
    connection: Connection, snapshot: MembershipSnapshot, deleted_at: int
) -> None:
    """Delete one incarnation of a membership and tombstone it.

    Clerk sends the full membership on deletion; its ``created_at`` names the incarnation, so a
    newer incarnation with the same id (should Clerk ever reuse one) is left alone. The nested
    organization snapshot is applied like any other, so the organization row ends up the same
    whichever order events arrive in.
    """
    organization_id = snapshot.organization.id
    lock_organization(connection, organization_id)
    if find_tombstone(connection, ORGANIZATION, organization_id) is not None:
        return
    write_organization(connection, snapshot.organization)
    remove_membership(connection, organization_id, snapshot.id, snapshot.created_at, deleted_at)


def remove_membership(
    connection: Connection,
    organization_id: str,
    membership_id: str,
    created_at: int,
    deleted_at: int,
) -> None:
    """Tombstone every incarnation of ``membership_id`` created at or before ``created_at`` and
    delete the row if it is one of them. ``delete_membership`` without the organization
    snapshot: reconciliation uses it for a membership Clerk no longer lists."""
    lock_organization(connection, organization_id)
    bury(
        connection,
        Tombstone(
            entity_type=ORGANIZATION_MEMBERSHIP,
            entity_id=membership_id,
            organization_id=organization_id,
            created_at=created_at,
            deleted_at=deleted_at,
            reason=DELETED,
        ),
    )
    # Only the pairs this membership id holds can change.
    forget_matching(
        connection,
        HOLDERS,
        lambda pair, holders: (
            pair[0] == organization_id and any(holder.id == membership_id for holder in holders)
        ),
    )
    drop_queued(
        connection,
        organization_memberships.name,
        lambda row: row["id"] == membership_id and row["created_at"] <= created_at,
    )
    delete_by_key(
        connection,
        organization_memberships.name,
        ("delete_membership", _delete_incarnations_statement),
        {"p_id": membership_id, "p_created_at": created_at},
    )


def _delete_incarnations_statement(_connection: Connection) -> Any:
    """The incarnations of a membership id created at or before a time."""
    return delete(organization_memberships).where(
        organization_memberships.c.id == bindparam("p_id"),
        organization_memberships.c.created_at <= bindparam("p_created_at"),
    )


def _supersede(
    connection: Connection,
    organization_id: str,
    loser_id: str,
    loser_created_at: int,
    winner_created_at: int,
) -> None:
    bury(
        connection,
        Tombstone(
            entity_type=ORGANIZATION_MEMBERSHIP,
            entity_id=loser_id,
            organization_id=organization_id,
            created_at=loser_created_at,
            deleted_at=winner_created_at,
            reason=SUPERSEDED,
        ),
    )
