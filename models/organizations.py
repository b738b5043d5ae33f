"""Organization mutations: versioned upsert and tombstoned delete."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import Connection, bindparam, delete, select, text

from models.database import (
    bound,
    cached_statement,
    insert_row,
    insert_rows,
    lock_organization,
)
from models.known import (
    HOLDERS,
    MISSING,
    ORGANIZATION_VERSIONS,
    forget,
    forget_matching,
    note,
    recall,
    remembering,
)
from models.queued import delete_by_key, drop_queued, queue_row, write_queued
from models.tables import organization_memberships, organizations
from models.tombstones import DELETED, ORGANIZATION, Tombstone, bury, find_tombstone


@dataclass(frozen=True)
class OrganizationSnapshot:
    """An organization as Clerk described it at ``updated_at`` (ms)."""

    id: str
    name: str
    slug: str | None
    image_url: str | None
    workspace_id: str | None
    public_metadata: dict[str, Any]
    created_by: str | None
    max_allowed_memberships: int | None
    created_at: int
    updated_at: int


def upsert_organization(connection: Connection, snapshot: OrganizationSnapshot) -> bool:
    """Create the organization or move it to a newer version; ignore stale or deleted ones.

    Returns whether a row was written, or, inside ``models.queued.writing_together``, queued
    to be.
    """
    lock_organization(connection, snapshot.id)
    if find_tombstone(connection, ORGANIZATION, snapshot.id) is not None:
        return False
    return write_organization(connection, snapshot)


def write_organization(connection: Connection, snapshot: OrganizationSnapshot) -> bool:
    """The write of ``upsert_organization`` alone, for a caller that holds the organization's
    lock and found no tombstone for it (a membership mutation): insert, or overwrite an older
    version (queued inside ``models.queued.writing_together``). Returns whether a row was
    written or queued."""
    known = recall(connection, ORGANIZATION_VERSIONS, snapshot.id)
    if known is not MISSING and snapshot.updated_at <= known:
        # Nested in every membership event: the row holds this version (or a newer one)
        # already, and the statement would change nothing.
        return False
    values = {
        "id": snapshot.id,
        "name": snapshot.name,
        "slug": snapshot.slug,
        "image_url": snapshot.image_url,
        "workspace_id": snapshot.workspace_id,
        "public_metadata": snapshot.public_metadata,
        "created_by": snapshot.created_by,
        "max_allowed_memberships": snapshot.max_allowed_memberships,
        "created_at": snapshot.created_at,
        "updated_at": snapshot.updated_at,
        "synced_at": datetime.now(UTC),
    }
    written = queue_row(
        connection,
        organizations.name,
        snapshot.id,
        (snapshot.updated_at,),
        values,
        ("upsert_organizations", _upsert_many_statement),
    )
    if written is None:
        statement = cached_statement(connection, "upsert_organization", _upsert_statement)
        written = connection.execute(statement, bound(values)).first() is not None
    note(connection, ORGANIZATION_VERSIONS, snapshot.id, snapshot.updated_at)
    return written


_VERSIONS_POSTGRESQL = text(
    "SELECT id, updated_at FROM organizations WHERE id = ANY(CAST(:ids AS text[]))"
)
_VERSIONS = select(organizations.c.id, organizations.c.updated_at).where(
    organizations.c.id.in_(bindparam("p_ids", expanding=True))
)
IDS_PER_QUERY: Final = 500


@contextmanager
def knowing_organization_versions(
    connection: Connection, organization_ids: Iterable[str]
) -> Iterator[None]:
    """Read the stored versions of these organizations at once, for ``write_organization`` in
    this block (``models.known``); call it holding their locks. Every membership event carries
    a snapshot of its organization, almost always the version already stored: the batch then
    skips the write instead of running an upsert that changes nothing."""
    wanted = sorted({value for value in organization_ids if "\x00" not in value})
    known: dict[str, int] = {}
    for start in range(0, len(wanted), IDS_PER_QUERY):
        chunk = wanted[start : start + IDS_PER_QUERY]
        if connection.dialect.name == "postgresql":
            rows = connection.execute(_VERSIONS_POSTGRESQL, {"ids": chunk})
        else:
            rows = connection.execute(_VERSIONS, {"p_ids": chunk})
        known.update((row.id, row.updated_at) for row in rows)
    with remembering(connection, ORGANIZATION_VERSIONS, known):
        yield


COLUMNS = tuple(column.name for column in organizations.columns)


def _upsert_many_statement(connection: Connection) -> Any:
    return _upserting(insert_rows(connection, organizations, COLUMNS))


def _upsert_statement(connection: Connection) -> Any:
    """``_upsert_many_statement`` for one row, saying whether it was written."""
    # RETURNING, not rowcount: psycopg reports -1 for INSERT ... ON CONFLICT DO UPDATE.
    statement = _upserting(insert_row(connection, organizations, COLUMNS))
    return statement.returning(organizations.c.id)


def _upserting(statement: Any) -> Any:
    """Insert, or overwrite a row holding an older version (``updated_at``)."""
    return statement.on_conflict_do_update(
        index_elements=[organizations.c.id],
        set_={name: statement.excluded[name] for name in COLUMNS if name != "id"},
        where=organizations.c.updated_at < statement.excluded.updated_at,
    )


def delete_organization(connection: Connection, organization_id: str, deleted_at: int) -> None:
    """Delete the organization and its members, and tombstone it for good: Clerk never reuses
    organization ids, so no later event for this id can be newer than the deletion."""
    lock_organization(connection, organization_id)
    bury(
        connection,
        Tombstone(
            entity_type=ORGANIZATION,
            entity_id=organization_id,
            organization_id=organization_id,
            created_at=None,
            deleted_at=deleted_at,
            reason=DELETED,
        ),
    )
    forget(connection, ORGANIZATION_VERSIONS, organization_id)
    forget_matching(connection, HOLDERS, lambda pair, _: pair[0] == organization_id)
    # Written, not dropped: a queued row may move a stored membership into this organization.
    write_queued(connection, organization_memberships.name)
    connection.execute(
        cached_statement(connection, "delete_members", _delete_members_statement),
        {"p_organization_id": organization_id},
    )
    drop_queued(connection, organizations.name, lambda row: row["id"] == organization_id)
    delete_by_key(
        connection,
        organizations.name,
        ("delete_organization", _delete_statement),
        {"p_id": organization_id},
    )


def _delete_members_statement(_connection: Connection) -> Any:
    return delete(organization_memberships).where(
        organization_memberships.c.organization_id == bindparam("p_organization_id")
    )


def _delete_statement(_connection: Connection) -> Any:
    return delete(organizations).where(organizations.c.id == bindparam("p_id"))
