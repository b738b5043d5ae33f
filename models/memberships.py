"""Membership rules: a versioned upsert, supersession of a replaced membership, tombstoned
deletes.

- Stale never wins: the row moves only to a newer (``created_at``, ``updated_at``)
  (``MEMBERSHIPS``): a later incarnation, or a later change of the same one.
- Tombstones never resurrect: a deleted organization, a deleted user, or a deleted (or
  superseded) incarnation of this membership refuses it.
- Create-on-update: ``created`` and ``updated`` are the same upsert, and the organization
  snapshot nested in the event creates or advances the organization first.
- One membership per (organization, user): the one created later wins; the other is
  tombstoned as superseded.
- Derived columns (``models.derived``): ``permissions`` from the stored role holding the
  membership's role key, the profile columns from the member's ``users`` row, each falling back
  to what the event listed (kept as ``listed_permissions`` and ``listed_identifier``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from models.derived import profile_columns
from models.locks import SHARED
from models.organizations import OrganizationSnapshot, write_organization
from models.tombstones import (
    DELETED,
    ORGANIZATION,
    ORGANIZATION_MEMBERSHIP,
    SUPERSEDED,
    USER,
    Tombstone,
)
from models.unit_of_work import UnitOfWork
from models.versioned import MEMBERSHIPS


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


def upsert_membership(work: UnitOfWork, snapshot: MembershipSnapshot) -> bool:
    """Apply a created/updated membership; returns whether the membership row was written.

    The user lock, taken after the organization lock (always in that order), orders the
    user-tombstone check against ``delete_user``.
    """
    organization_id = snapshot.organization.id
    work.lock_organization(organization_id)
    if work.tombstone(ORGANIZATION, organization_id) is not None:
        return False
    write_organization(work, snapshot.organization)
    work.lock_user(snapshot.user_id)
    user_tombstone, tombstone = work.tombstones(
        (USER, snapshot.user_id), (ORGANIZATION_MEMBERSHIP, snapshot.id)
    )
    if user_tombstone is not None:
        return False
    if tombstone is not None and (tombstone.created_at or 0) >= snapshot.created_at:
        return False  # this incarnation, or a later one, was deleted or superseded

    values = _values(work, snapshot)
    holder = work.holder(organization_id, snapshot.user_id, other_than=snapshot.id)
    if holder is None:
        return work.upsert(MEMBERSHIPS, values)
    if (holder.created_at, holder.id) > (snapshot.created_at, snapshot.id):
        _supersede(work, organization_id, snapshot.id, snapshot.created_at, holder.created_at)
        return False
    _supersede(work, organization_id, holder.id, holder.created_at, snapshot.created_at)
    return work.replace(MEMBERSHIPS, holder.id, values)


def delete_membership(work: UnitOfWork, snapshot: MembershipSnapshot, deleted_at: int) -> None:
    """Delete one incarnation of a membership and tombstone it.

    Clerk sends the full membership on deletion; its ``created_at`` names the incarnation, so a
    newer incarnation with the same id (should Clerk ever reuse one) is left alone. The nested
    organization snapshot is applied like any other, so the organization row ends up the same
    whichever order events arrive in.
    """
    organization_id = snapshot.organization.id
    work.lock_organization(organization_id)
    if work.tombstone(ORGANIZATION, organization_id) is not None:
        return
    write_organization(work, snapshot.organization)
    remove_membership(work, organization_id, snapshot.id, snapshot.created_at, deleted_at)


def remove_membership(
    work: UnitOfWork,
    organization_id: str,
    membership_id: str,
    created_at: int,
    deleted_at: int,
) -> None:
    """Tombstone every incarnation of ``membership_id`` created at or before ``created_at`` and
    delete the row if it is one of them. ``delete_membership`` without the organization
    snapshot: reconciliation uses it for a membership Clerk no longer lists."""
    work.lock_organization(organization_id)
    work.bury(
        Tombstone(
            entity_type=ORGANIZATION_MEMBERSHIP,
            entity_id=membership_id,
            organization_id=organization_id,
            created_at=created_at,
            deleted_at=deleted_at,
            reason=DELETED,
        )
    )
    work.delete(MEMBERSHIPS, membership_id, created_at_most=created_at)


def _supersede(
    work: UnitOfWork,
    organization_id: str,
    loser_id: str,
    loser_created_at: int,
    winner_created_at: int,
) -> None:
    work.bury(
        Tombstone(
            entity_type=ORGANIZATION_MEMBERSHIP,
            entity_id=loser_id,
            organization_id=organization_id,
            created_at=loser_created_at,
            deleted_at=winner_created_at,
            reason=SUPERSEDED,
        )
    )


def _values(work: UnitOfWork, snapshot: MembershipSnapshot) -> dict[str, Any]:
    """The row: what the event listed, and the columns derived from the stored role and user
    (the roles lock, shared, taken after the organization and user locks)."""
    work.lock_roles(SHARED)
    granted = work.role_book().permissions_of(snapshot.role)
    listed = {
        "identifier": snapshot.identifier,
        "first_name": snapshot.first_name,
        "last_name": snapshot.last_name,
        "image_url": snapshot.image_url,
    }
    return {
        "id": snapshot.id,
        "organization_id": snapshot.organization.id,
        "user_id": snapshot.user_id,
        "role": snapshot.role,
        "permissions": snapshot.permissions if granted is None else granted,
        "listed_permissions": snapshot.permissions,
        **profile_columns(work.user_profile(snapshot.user_id), listed),
        "listed_identifier": snapshot.identifier,
        "public_metadata": snapshot.public_metadata,
        "created_at": snapshot.created_at,
        "updated_at": snapshot.updated_at,
        "synced_at": datetime.now(UTC),
    }
