"""``organization.*`` events."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from models.organizations import delete_organization, upsert_organization
from models.tombstones import ORGANIZATION
from models.unit_of_work import UnitOfWork
from workers.handlers.family import EventFamily, TargetSink
from workers.handlers.payloads import (
    Envelope,
    id_in,
    organization_snapshot,
    require,
    require_event_time,
)


def on_organization_upserted(work: UnitOfWork, envelope: Envelope, workspace_key: str) -> None:
    """``organization.created`` and ``.updated`` are the same upsert: either may arrive first."""
    upsert_organization(work, organization_snapshot(envelope.data, workspace_key))


def on_organization_deleted(work: UnitOfWork, envelope: Envelope, _workspace_key: str) -> None:
    delete_organization(
        work, require(envelope.data, "id", str, "data"), require_event_time(envelope)
    )


def organization_id(data: Mapping[str, Any]) -> str | None:
    """``data.id``: the payload is the organization."""
    return id_in(data, "id") or None


def add_targets(targets: TargetSink, _action: str, data: Mapping[str, Any]) -> None:
    if identifier := organization_id(data):
        targets.organizations.add(identifier)
        targets.tombstones.add((ORGANIZATION, identifier))


FAMILY = EventFamily(
    name="organization",
    handlers={
        "created": on_organization_upserted,
        "updated": on_organization_upserted,
        "deleted": on_organization_deleted,
    },
    add_targets=add_targets,
    organization_id=organization_id,
)
