"""User mutations: versioned upsert, and a tombstoned delete that also removes the user's
memberships in every organization."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import Connection, delete

from models.database import bind_parameters, bound, cached_statement, insert_for, lock_user
from models.known import HOLDERS, forget_matching
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


PENDING_USERS: Final = "clerk_sync.pending_users"
"""``Connection.info`` key: user id → the newest values a block of ``writing_users_together``
has yet to write."""


def upsert_user(connection: Connection, snapshot: UserSnapshot) -> bool:
    """Create the user or move it to a newer version; ignore stale or deleted ones.

    Returns whether a row was written, or, inside ``writing_users_together``, queued to be.
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
    pending = connection.info.get(PENDING_USERS)
    if pending is not None:
        queued = pending.get(snapshot.id)
        # As one write after another would: a version no newer than the queued one loses.
        if queued is not None and queued["updated_at"] >= snapshot.updated_at:
            return False
        pending[snapshot.id] = values
        return True
    statement = cached_statement(connection, "upsert_user", _upsert_statement)
    return connection.execute(statement, bound(values)).first() is not None


@contextmanager
def writing_users_together(connection: Connection) -> Iterator[None]:
    """Let the user upserts in this block queue their rows, and write them when it ends, in
    one statement (SQLAlchemy sends it as a multi-row ``INSERT … ON CONFLICT``): a batch's user
    events cost one statement instead of one each. Nothing else in a batch reads the users
    table, and a user deleted in the block drops its queued row, so the tables end up as if
    each upsert had been written at once. Nothing is written if the block raises; a failing
    write raises here, and the caller must roll the transaction back."""
    pending: dict[str, dict[str, Any]] = {}
    connection.info[PENDING_USERS] = pending
    try:
        yield
    finally:
        # ``info`` belongs to the pooled DBAPI connection and outlives the transaction.
        connection.info.pop(PENDING_USERS, None)
    if pending:
        statement = cached_statement(connection, "upsert_users", _upsert_many_statement)
        connection.execute(statement, [bound(values) for values in pending.values()])


COLUMNS = tuple(column.name for column in users.columns)


def _upsert_many_statement(connection: Connection) -> Any:
    """Insert, or overwrite a row holding an older version (``updated_at``)."""
    statement = insert_for(connection, users).values(bind_parameters(users, COLUMNS))
    return statement.on_conflict_do_update(
        index_elements=[users.c.id],
        set_={name: statement.excluded[name] for name in COLUMNS if name != "id"},
        where=users.c.updated_at < statement.excluded.updated_at,
    )


def _upsert_statement(connection: Connection) -> Any:
    """``_upsert_many_statement`` for one row, saying whether it was written."""
    # RETURNING, not rowcount: psycopg reports -1 for INSERT ... ON CONFLICT DO UPDATE.
    return _upsert_many_statement(connection).returning(users.c.id)


def delete_user(connection: Connection, user_id: str, deleted_at: int) -> None:
    """Delete the user and its memberships in every organization, and tombstone it for good:
    Clerk never reuses user ids. ``upsert_membership`` checks this tombstone under the same
    per-user lock, so a membership event that arrives late cannot bring a membership back."""
    lock_user(connection, user_id)
    pending = connection.info.get(PENDING_USERS)
    if pending is not None:
        pending.pop(user_id, None)
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
    connection.execute(
        delete(organization_memberships).where(organization_memberships.c.user_id == user_id)
    )
    connection.execute(delete(users).where(users.c.id == user_id))
