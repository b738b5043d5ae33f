"""``organization.*`` events."""

from __future__ import annotations

from sqlalchemy import Connection

from models.organizations import delete_organization, upsert_organization
from workers.handlers.payloads import Envelope, organization_snapshot, require, require_event_time


def on_organization_upserted(
    connection: Connection, envelope: Envelope, workspace_key: str
) -> None:
    """``organization.created`` and ``.updated`` are the same upsert: either may arrive first."""
    upsert_organization(connection, organization_snapshot(envelope.data, workspace_key))


def on_organization_deleted(
    connection: Connection, envelope: Envelope, _workspace_key: str
) -> None:
    delete_organization(
        connection, require(envelope.data, "id", str, "data"), require_event_time(envelope)
    )
