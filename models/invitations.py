"""Invitation rules: a versioned upsert. Clerk sends no deletion: ``accepted`` and ``revoked``
end an invitation, and its status changes only with a newer ``updated_at``.

- Stale never wins: the row moves only to a newer ``updated_at`` (``INVITATIONS``), so a late
  ``created`` (pending) never overwrites an ``accepted`` or ``revoked``.
- Tombstones never resurrect: a deleted organization's invitations are refused (and deleted with
  it: ``delete_organization``); an invitation may arrive before its organization.
- Create-on-update: ``created``, ``accepted`` and ``revoked`` are the same upsert.
- Erasure: an invitation accepted by a deleted user keeps no email address (``delete_user``
  blanks it, and a late event for it is stored blank), as its erased events say.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from models.tombstones import ORGANIZATION, USER
from models.unit_of_work import UnitOfWork
from models.versioned import INVITATIONS


@dataclass(frozen=True)
class InvitationSnapshot:
    """An invitation as Clerk described it at ``updated_at`` (ms); its fields are the columns
    of ``organization_invitations``."""

    id: str
    organization_id: str
    email_address: str | None
    role: str
    role_name: str | None
    status: str
    public_metadata: dict[str, Any]
    url: str | None
    inviter_id: str | None
    user_id: str | None
    """The user who accepted it (``accepted`` only)."""
    expires_at: int | None
    created_at: int
    updated_at: int


def upsert_invitation(work: UnitOfWork, snapshot: InvitationSnapshot) -> bool:
    """Create the invitation or move it to a newer version; ignore stale ones and those of a
    deleted organization. Returns whether a row was written (or queued to be)."""
    work.lock_organization(snapshot.organization_id)
    if work.tombstone(ORGANIZATION, snapshot.organization_id) is not None:
        return False
    values = {**vars(snapshot), "synced_at": datetime.now(UTC)}
    if snapshot.user_id is not None:
        work.lock_user(snapshot.user_id)
        if work.tombstone(USER, snapshot.user_id) is not None:
            values["email_address"] = None
    return work.upsert(INVITATIONS, values)
