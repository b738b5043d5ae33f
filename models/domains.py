"""Domain rules: a versioned upsert and a tombstoned delete.

- Stale never wins: the row moves only to a newer ``updated_at`` (``DOMAINS``).
- Tombstones never resurrect: a deleted domain's id is refused for good (Clerk never reuses
  ids), and so are the domains of a deleted organization (deleted with it).
- Create-on-update: ``created`` and ``updated`` are the same upsert.
- A deletion names no organization: the domain's own lock orders it against its upserts, and
  the stored row, if any, says which organization the tombstone belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from models.locks import entity_key
from models.tombstones import DELETED, ORGANIZATION, ORGANIZATION_DOMAIN, Tombstone
from models.unit_of_work import UnitOfWork
from models.versioned import DOMAINS


@dataclass(frozen=True)
class DomainSnapshot:
    """A domain as Clerk described it at ``updated_at`` (ms); its fields are the columns of
    ``organization_domains``."""

    id: str
    organization_id: str
    name: str
    enrollment_mode: str | None
    verification_status: str | None
    """``affiliation_verification.status``, else the deprecated ``verification.status``."""
    ownership_verification_status: str | None
    affiliation_email_address: str | None
    total_pending_invitations: int | None
    total_pending_suggestions: int | None
    created_at: int
    updated_at: int


def domain_lock(domain_id: str) -> str:
    """The key of the lock ordering a domain's writes (``UnitOfWork.lock_entity``)."""
    return entity_key(ORGANIZATION_DOMAIN, domain_id)


def upsert_domain(work: UnitOfWork, snapshot: DomainSnapshot) -> bool:
    """Create the domain or move it to a newer version; ignore stale or deleted ones. Returns
    whether a row was written (or queued to be)."""
    work.lock_organization(snapshot.organization_id)
    work.lock_entity(domain_lock(snapshot.id))
    organization, domain = work.tombstones(
        (ORGANIZATION, snapshot.organization_id), (ORGANIZATION_DOMAIN, snapshot.id)
    )
    if organization is not None or domain is not None:
        return False
    return work.upsert(DOMAINS, {**vars(snapshot), "synced_at": datetime.now(UTC)})


def delete_domain(work: UnitOfWork, domain_id: str, deleted_at: int) -> None:
    """Delete the domain and tombstone it for good, under the organization the stored row
    names (None when it was never stored)."""
    work.lock_entity(domain_lock(domain_id))
    stored = work.stored_row(DOMAINS, domain_id)
    work.bury(
        Tombstone(
            entity_type=ORGANIZATION_DOMAIN,
            entity_id=domain_id,
            organization_id=None if stored is None else stored["organization_id"],
            created_at=None,
            deleted_at=deleted_at,
            reason=DELETED,
        )
    )
    work.delete(DOMAINS, domain_id)
