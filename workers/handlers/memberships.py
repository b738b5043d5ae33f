"""``organizationMembership.*`` events."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection

from models.memberships import MembershipSnapshot, delete_membership, upsert_membership
from workers.handlers.payloads import (
    Envelope,
    optional,
    organization_snapshot,
    require,
    require_event_time,
    require_timestamp,
)


def membership_snapshot(data: Mapping[str, Any], workspace_key: str) -> MembershipSnapshot:
    organization = require(data, "organization", dict, "data")
    user = require(data, "public_user_data", dict, "data")
    permissions = data.get("permissions")
    metadata = data.get("public_metadata")
    return MembershipSnapshot(
        id=require(data, "id", str, "data"),
        organization=organization_snapshot(organization, workspace_key, "data.organization"),
        user_id=require(user, "user_id", str, "data.public_user_data"),
        role=require(data, "role", str, "data"),
        permissions=[p for p in permissions if isinstance(p, str)]
        if isinstance(permissions, list)
        else [],
        identifier=optional(user, "identifier", str),
        first_name=optional(user, "first_name", str),
        last_name=optional(user, "last_name", str),
        image_url=optional(user, "image_url", str),
        public_metadata=dict(metadata) if isinstance(metadata, dict) else {},
        created_at=require_timestamp(data, "created_at", "data"),
        updated_at=require_timestamp(data, "updated_at", "data"),
    )


def on_membership_upserted(connection: Connection, envelope: Envelope, workspace_key: str) -> None:
    upsert_membership(connection, membership_snapshot(envelope.data, workspace_key))


def on_membership_deleted(connection: Connection, envelope: Envelope, workspace_key: str) -> None:
    """The deleted payload is the full membership, but its ``updated_at`` is its last change, not
    the deletion: the envelope time dates the deletion."""
    delete_membership(
        connection, membership_snapshot(envelope.data, workspace_key), require_event_time(envelope)
    )
