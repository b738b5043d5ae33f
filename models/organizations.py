"""Organization rules: a versioned upsert, and a tombstoned delete that takes the members along.

- Stale never wins: the row moves only to a newer ``updated_at`` (``ORGANIZATIONS``).
- Tombstones never resurrect: a deleted organization's id is refused for good.
- Create-on-update: ``created`` and ``updated`` are the same upsert, and so is the snapshot
  nested in every membership event (``write_organization``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from models.tombstones import DELETED, ORGANIZATION, Tombstone
from models.unit_of_work import UnitOfWork
from models.versioned import DOMAINS, INVITATIONS, MEMBERSHIPS, ORGANIZATIONS


@dataclass(frozen=True)
class OrganizationSnapshot:
    """An organization as Clerk described it at ``updated_at`` (ms); its fields are the
    columns of ``organizations``."""

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


def upsert_organization(work: UnitOfWork, snapshot: OrganizationSnapshot) -> bool:
    """Create the organization or move it to a newer version; ignore stale or deleted ones.
    Returns whether a row was written (or queued to be)."""
    work.lock_organization(snapshot.id)
    if work.tombstone(ORGANIZATION, snapshot.id) is not None:
        return False
    return write_organization(work, snapshot)


def write_organization(work: UnitOfWork, snapshot: OrganizationSnapshot) -> bool:
    """The write of ``upsert_organization`` alone, for a caller that holds the organization's
    lock and found no tombstone for it (a membership rule)."""
    return work.upsert(ORGANIZATIONS, {**vars(snapshot), "synced_at": datetime.now(UTC)})


def delete_organization(work: UnitOfWork, organization_id: str, deleted_at: int) -> None:
    """Delete the organization, its members, invitations and domains, and tombstone it for
    good: Clerk never reuses organization ids, so no later event for this id can be newer than
    the deletion."""
    work.lock_organization(organization_id)
    work.bury(
        Tombstone(
            entity_type=ORGANIZATION,
            entity_id=organization_id,
            organization_id=organization_id,
            created_at=None,
            deleted_at=deleted_at,
            reason=DELETED,
        )
    )
    work.delete_where(MEMBERSHIPS, "organization_id", organization_id)
    work.delete_where(INVITATIONS, "organization_id", organization_id)
    work.delete_where(DOMAINS, "organization_id", organization_id)
    work.delete(ORGANIZATIONS, organization_id)
