"""Permission rules: a versioned upsert and a tombstoned delete, each reaching the memberships
whose role grants the permission (their derived ``permissions``: ``models.derived``).

- Stale never wins: the row moves only to a newer ``updated_at`` (``PERMISSIONS``).
- Tombstones never resurrect: a deleted permission's id is refused for good (Clerk never reuses
  ids), here and as a copy embedded in a ``role.*`` event.
- Create-on-update: ``created``, ``updated`` and a role's embedded copy are the same upsert.
- Propagation: a new permission, or a new key, changes the memberships of the roles granting it;
  so does its deletion. Writers hold the roles lock exclusively, membership upserts share it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from models.locks import EXCLUSIVE
from models.tombstones import DELETED, PERMISSION, Tombstone
from models.unit_of_work import UnitOfWork
from models.versioned import PERMISSIONS


@dataclass(frozen=True)
class PermissionSnapshot:
    """A permission as Clerk described it at ``updated_at`` (ms); its fields are the columns of
    ``organization_permissions``."""

    id: str
    key: str
    name: str
    description: str | None
    type: str | None
    created_at: int
    updated_at: int


def upsert_permission(work: UnitOfWork, snapshot: PermissionSnapshot) -> bool:
    """Create the permission or move it to a newer version; ignore stale or deleted ones.
    Returns whether a row was written (or queued to be)."""
    work.lock_roles(EXCLUSIVE)
    return write_permission(work, snapshot)


def write_permission(work: UnitOfWork, snapshot: PermissionSnapshot) -> bool:
    """``upsert_permission`` for a caller holding the roles lock exclusively (a role rule)."""
    if work.tombstone(PERMISSION, snapshot.id) is not None:
        return False
    book = work.role_book()
    stored_key = book.permissions.get(snapshot.id)
    written = work.upsert(PERMISSIONS, {**vars(snapshot), "synced_at": datetime.now(UTC)})
    if written and stored_key != snapshot.key:
        work.refresh_permissions(book.keys_granting(snapshot.id))
    return written


def delete_permission(work: UnitOfWork, permission_id: str, deleted_at: int) -> None:
    """Delete the permission and tombstone it for good: no later event for this id can be newer
    than the deletion. The memberships granted it through a role lose it."""
    work.lock_roles(EXCLUSIVE)
    book = work.role_book()
    existed = permission_id in book.permissions
    work.bury(
        Tombstone(
            entity_type=PERMISSION,
            entity_id=permission_id,
            organization_id=None,
            created_at=None,
            deleted_at=deleted_at,
            reason=DELETED,
        )
    )
    work.delete(PERMISSIONS, permission_id)
    if existed:
        work.refresh_permissions(book.keys_granting(permission_id))
