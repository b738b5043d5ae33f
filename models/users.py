"""User rules: a versioned upsert, and a tombstoned delete that also removes the user's
memberships in every organization.

- Stale never wins: the row moves only to a newer ``updated_at`` (``USERS``).
- Tombstones never resurrect: a deleted user's id is refused for good, here and by
  ``upsert_membership``.
- Create-on-update: ``created`` and ``updated`` are the same upsert.
- Propagation: a written user recomputes the profile columns of its memberships
  (``models.derived``); a deleted one leaves no email address on the invitations it accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from models.tombstones import DELETED, USER, Tombstone
from models.unit_of_work import UnitOfWork
from models.versioned import MEMBERSHIPS, USERS


@dataclass(frozen=True)
class UserSnapshot:
    """A user as Clerk described it at ``updated_at`` (ms); its fields are the columns of
    ``users``."""

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


def upsert_user(work: UnitOfWork, snapshot: UserSnapshot) -> bool:
    """Create the user or move it to a newer version; ignore stale or deleted ones. Returns
    whether a row was written (or queued to be)."""
    work.lock_user(snapshot.id)
    if work.tombstone(USER, snapshot.id) is not None:
        return False
    written = work.upsert(USERS, {**vars(snapshot), "synced_at": datetime.now(UTC)})
    if written:
        work.refresh_profiles(snapshot.id)  # the profile columns of the user's memberships
    return written


def delete_user(work: UnitOfWork, user_id: str, deleted_at: int) -> None:
    """Delete the user and its memberships in every organization, and tombstone it for good:
    Clerk never reuses user ids. ``upsert_membership`` checks this tombstone under the same
    per-user lock, so a membership event that arrives late cannot bring a membership back."""
    work.lock_user(user_id)
    work.bury(
        Tombstone(
            entity_type=USER,
            entity_id=user_id,
            organization_id=None,
            created_at=None,
            deleted_at=deleted_at,
            reason=DELETED,
        )
    )
    work.delete_where(MEMBERSHIPS, "user_id", user_id)
    work.delete(USERS, user_id)
    work.erase_invitation_emails(user_id)
