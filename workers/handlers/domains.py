"""``organizationDomain.*`` events."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from models.domains import DomainSnapshot, delete_domain, domain_lock, upsert_domain
from models.tombstones import ORGANIZATION, ORGANIZATION_DOMAIN
from models.unit_of_work import UnitOfWork
from workers.handlers.family import EventFamily, TargetSink
from workers.handlers.payloads import (
    Envelope,
    id_in,
    optional,
    require,
    require_event_time,
    require_timestamp,
)


def domain_snapshot(data: Mapping[str, Any], where: str = "data") -> DomainSnapshot:
    """A Clerk OrganizationDomain (webhook ``data`` or a Backend API item). Its verification
    status is ``affiliation_verification``'s, else the deprecated ``verification``'s."""
    affiliation = data.get("affiliation_verification") or data.get("verification")
    return DomainSnapshot(
        id=require(data, "id", str, where),
        organization_id=require(data, "organization_id", str, where),
        name=require(data, "name", str, where),
        enrollment_mode=optional(data, "enrollment_mode", str),
        verification_status=_status(affiliation),
        ownership_verification_status=_status(data.get("ownership_verification")),
        affiliation_email_address=optional(data, "affiliation_email_address", str),
        total_pending_invitations=optional(data, "total_pending_invitations", int),
        total_pending_suggestions=optional(data, "total_pending_suggestions", int),
        created_at=require_timestamp(data, "created_at", where),
        updated_at=require_timestamp(data, "updated_at", where),
    )


def _status(verification: Any) -> str | None:
    return optional(verification, "status", str) if isinstance(verification, dict) else None


def on_domain_upserted(work: UnitOfWork, envelope: Envelope, _workspace_key: str) -> None:
    """``organizationDomain.created`` and ``.updated`` are the same upsert."""
    upsert_domain(work, domain_snapshot(envelope.data))


def on_domain_deleted(work: UnitOfWork, envelope: Envelope, _workspace_key: str) -> None:
    """The payload is a DeletedObject: the domain's id (no organization), dated by the
    envelope."""
    delete_domain(work, require(envelope.data, "id", str, "data"), require_event_time(envelope))


def add_targets(targets: TargetSink, _action: str, data: Mapping[str, Any]) -> None:
    """The organization (when named), the domain's own lock, and their tombstones."""
    if organization_id := id_in(data, "organization_id"):
        targets.organizations.add(organization_id)
        targets.tombstones.add((ORGANIZATION, organization_id))
    if domain_id := id_in(data, "id"):
        targets.entities.add(domain_lock(domain_id))
        targets.tombstones.add((ORGANIZATION_DOMAIN, domain_id))


FAMILY = EventFamily(
    name="organizationDomain",
    handlers={
        "created": on_domain_upserted,
        "updated": on_domain_upserted,
        "deleted": on_domain_deleted,
    },
    add_targets=add_targets,
)
