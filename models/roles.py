"""Role rules: a versioned upsert (with the permissions it embeds) and a tombstoned delete, each
reaching the memberships that hold the role's key (their derived ``permissions``:
``models.derived``).

- Stale never wins: the row moves only to a newer ``updated_at`` (``ROLES``); each embedded
  permission is its own versioned upsert (``write_permission``).
- Tombstones never resurrect: a deleted role's id is refused for good (Clerk never reuses ids).
- Create-on-update: ``created`` and ``updated`` are the same upsert.
- Propagation: the memberships holding the role's old or new key are recomputed when its key
  or permission set changes, or it is deleted. Writers hold the roles lock exclusively.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from models.locks import EXCLUSIVE
from models.permissions import PermissionSnapshot, write_permission
from models.tombstones import DELETED, ROLE, Tombstone
from models.unit_of_work import UnitOfWork
from models.versioned import ROLES


@dataclass(frozen=True)
class RoleSnapshot:
    """A role as Clerk described it at ``updated_at`` (ms), with the permissions it grants
    (stored as ``permission_ids``; their keys come from ``organization_permissions``)."""

    id: str
    key: str
    name: str
    description: str | None
    is_creator_eligible: bool | None
    permissions: tuple[PermissionSnapshot, ...]
    created_at: int
    updated_at: int


def upsert_role(work: UnitOfWork, snapshot: RoleSnapshot) -> bool:
    """Create the role or move it to a newer version; ignore stale or deleted ones. Its embedded
    permissions are upserted first. Returns whether the role's row was written (or queued)."""
    work.lock_roles(EXCLUSIVE)
    for permission in snapshot.permissions:
        write_permission(work, permission)
    if work.tombstone(ROLE, snapshot.id) is not None:
        return False
    permission_ids = tuple(permission.id for permission in snapshot.permissions)
    stored = work.role_book().roles.get(snapshot.id)
    values = {
        "id": snapshot.id,
        "key": snapshot.key,
        "name": snapshot.name,
        "description": snapshot.description,
        "permission_ids": list(permission_ids),
        "is_creator_eligible": snapshot.is_creator_eligible,
        "created_at": snapshot.created_at,
        "updated_at": snapshot.updated_at,
        "synced_at": datetime.now(UTC),
    }
    written = work.upsert(ROLES, values)
    if written and (
        stored is None or (stored.key, stored.permission_ids) != (snapshot.key, permission_ids)
    ):
        work.refresh_permissions({snapshot.key} | ({stored.key} if stored else set()))
    return written


def delete_role(work: UnitOfWork, role_id: str, deleted_at: int) -> None:
    """Delete the role and tombstone it for good. Clerk refuses to delete a role members hold,
    but should any still hold its key, they fall back to what their own events listed."""
    work.lock_roles(EXCLUSIVE)
    stored = work.role_book().roles.get(role_id)
    work.bury(
        Tombstone(
            entity_type=ROLE,
            entity_id=role_id,
            organization_id=None,
            created_at=None,
            deleted_at=deleted_at,
            reason=DELETED,
        )
    )
    work.delete(ROLES, role_id)
    if stored is not None:
        work.refresh_permissions({stored.key})
