"""User mutations: versioned upsert, and a tombstoned delete that also removes the user's
memberships in every organization."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, bindparam, delete

from models.database import bound, cached_statement, insert_row, insert_rows, lock_user
from models.known import HOLDERS, forget_matching
from models.queued import delete_by_key, drop_queued, queue_row, write_queued
from models.tables import organization_memberships, users
from models.tombstones import DELETED, USER, Tombstone, bury, find_tombstone


@dataclass(frozen=True)
class UserSnapshot:
    """A user as Clerk described it at ``updated_at`` (ms)."""

    id: str
    primary_email_address: str | None
    username: str | None
    first_name: str | None
    last_name: str | None
    image_url: str | None
    external_id: str | None
    public_metadata: dict[str, Any]
    created_at: int
    updated_at: int


def upsert_user(connection: Connection, snapshot: UserSnapshot) -> bool:
    """Create the user or move it to a newer version; ignore stale or deleted ones.

    Returns whether a row was written, or, inside ``models.queued.writing_together``, queued
    to be.
    """
    lock_user(connection, snapshot.id)
    if find_tombstone(connection, USER, snapshot.id) is not None:
        return False
    values = {
        "id": snapshot.id,
        "primary_email_address": snapshot.primary_email_address,
        "username": snapshot.username,
        "first_name": snapshot.first_name,
        "last_name": snapshot.last_name,
        "image_url": snapshot.image_url,
        "external_id": snapshot.external_id,
        "public_metadata": snapshot.public_metadata,
        "created_at": snapshot.created_at,
        "updated_at": snapshot.updated_at,
        "synced_at": datetime.now(UTC),
    }
    queued = queue_row(
        connection,
        users.name,
        snapshot.id,
        (snapshot.updated_at,),
        values,
        ("upsert_users", _upsert_many_statement),
    )
    if queued is not None:
        return queued
    statement = cached_statement(connection, "upsert_user", _upsert_statement)
    return connection.execute(statement, bound(values)).first() is not None


COLUMNS = tuple(column.name for column in users.columns)


def _upsert_many_statement(connection: Connection) -> Any:
    return _upserting(insert_rows(connection, users, COLUMNS))


def _upsert_statement(connection: Connection) -> Any:
    """``_upsert_many_statement`` for one row, saying whether it was written."""
    # RETURNING, not rowcount: psycopg reports -1 for INSERT ... ON CONFLICT DO UPDATE.
    return _upserting(insert_row(connection, users, COLUMNS)).returning(users.c.id)


def _upserting(statement: Any) -> Any:
    """Insert, or overwrite a row holding an older version (``updated_at``)."""
    return statement.on_conflict_do_update(
        index_elements=[users.c.id],
        set_={name: statement.excluded[name] for name in COLUMNS if name != "id"},
        where=users.c.updated_at < statement.excluded.updated_at,
    )


def delete_user(connection: Connection, user_id: str, deleted_at: int) -> None:
    """Delete the user and its memberships in every organization, and tombstone it for good:
    Clerk never reuses user ids. ``upsert_membership`` checks this tombstone under the same
    per-user lock, so a membership event that arrives late cannot bring a membership back."""
    lock_user(connection, user_id)
    bury(
        connection,
        Tombstone(
            entity_type=USER,
            entity_id=user_id,
            organization_id=None,
            created_at=None,
            deleted_at=deleted_at,
            reason=DELETED,
        ),
    )
    forget_matching(connection, HOLDERS, lambda pair, _: pair[1] == user_id)
    # Written, not dropped: a queued row may move a stored membership to this user.
    write_queued(connection, organization_memberships.name)
    connection.execute(
        cached_statement(connection, "delete_memberships_of_user", _delete_memberships_statement),
        {"p_user_id": user_id},
    )
    drop_queued(connection, users.name, lambda row: row["id"] == user_id)
    delete_by_key(connection, users.name, ("delete_user", _delete_statement), {"p_id": user_id})


def _delete_memberships_statement(_connection: Connection) -> Any:
    return delete(organization_memberships).where(
        organization_memberships.c.user_id == bindparam("p_user_id")
    )


def _delete_statement(_connection: Connection) -> Any:
    return delete(users).where(users.c.id == bindparam("p_id"))
