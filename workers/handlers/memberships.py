"""``organizationMembership.*`` events."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from models.locks import SHARED, stronger
from models.memberships import MembershipSnapshot, delete_membership, upsert_membership
from models.tombstones import ORGANIZATION, ORGANIZATION_MEMBERSHIP, USER
from models.unit_of_work import UnitOfWork
from workers.handlers.family import EventFamily, TargetSink
from workers.handlers.payloads import (
    Envelope,
    id_in,
    optional,
    organization_snapshot,
    require,
    require_event_time,
    require_timestamp,
)

ORGANIZATION_KEY = "organization"
"""``data.organization``: the whole organization the membership is in."""
MEMBER_KEY = "public_user_data"
"""``data.public_user_data``: the member, whose id is ``user_id``."""
USER_ID_KEY = "user_id"


@dataclass(frozen=True)
class MembershipIds:
    """The ids a membership payload names, "" for each it does not (read without raising)."""

    membership_id: str
    organization_id: str
    user_id: str

    @classmethod
    def of(cls, data: Mapping[str, Any]) -> MembershipIds:
        return cls(
            membership_id=id_in(data, "id"),
            organization_id=id_in(data.get(ORGANIZATION_KEY), "id"),
            user_id=id_in(data.get(MEMBER_KEY), USER_ID_KEY),
        )


def membership_snapshot(data: Mapping[str, Any], workspace_key: str) -> MembershipSnapshot:
    organization = require(data, ORGANIZATION_KEY, dict, "data")
    user = require(data, MEMBER_KEY, dict, "data")
    permissions = data.get("permissions")
    metadata = data.get("public_metadata")
    return MembershipSnapshot(
        id=require(data, "id", str, "data"),
        organization=organization_snapshot(organization, workspace_key, f"data.{ORGANIZATION_KEY}"),
        user_id=require(user, USER_ID_KEY, str, f"data.{MEMBER_KEY}"),
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


def on_membership_upserted(work: UnitOfWork, envelope: Envelope, workspace_key: str) -> None:
    upsert_membership(work, membership_snapshot(envelope.data, workspace_key))


def on_membership_deleted(work: UnitOfWork, envelope: Envelope, workspace_key: str) -> None:
    """The deleted payload is the full membership, but its ``updated_at`` is its last change, not
    the deletion: the envelope time dates the deletion."""
    delete_membership(
        work, membership_snapshot(envelope.data, workspace_key), require_event_time(envelope)
    )


def organization_id(data: Mapping[str, Any]) -> str | None:
    """``data.organization.id``."""
    return MembershipIds.of(data).organization_id or None


def member_id(data: Mapping[str, Any]) -> str | None:
    """``data.public_user_data.user_id``."""
    return MembershipIds.of(data).user_id or None


PERSONAL_MEMBER_FIELDS: Final = (
    "first_name",
    "last_name",
    "identifier",
    "image_url",
    "profile_image_url",
)
"""What ``public_user_data`` holds about the person (erased to null)."""


def redact(data: dict[str, Any]) -> None:
    member = data.get(MEMBER_KEY)
    if isinstance(member, dict):
        for name in PERSONAL_MEMBER_FIELDS:
            if name in member:
                member[name] = None


def add_targets(targets: TargetSink, action: str, data: Mapping[str, Any]) -> None:
    """The organization and, unless deleted, the member (a deletion takes no user lock). The
    member's tombstone in any case: whether the member is deleted decides whether the event's
    stored payload is erased (``workers.erasure``)."""
    ids = MembershipIds.of(data)
    if ids.organization_id:
        targets.organizations.add(ids.organization_id)
        targets.tombstones.add((ORGANIZATION, ids.organization_id))
        if ids.membership_id:
            targets.tombstones.add((ORGANIZATION_MEMBERSHIP, ids.membership_id))
    if ids.user_id:
        targets.tombstones.add((USER, ids.user_id))
    if action != "deleted":
        targets.roles = stronger(targets.roles, SHARED)  # its permissions come from the roles
    if action != "deleted" and ids.user_id:
        targets.users.add(ids.user_id)
        if ids.organization_id:
            targets.holders.add((ids.organization_id, ids.user_id))


FAMILY = EventFamily(
    name="organizationMembership",
    handlers={
        "created": on_membership_upserted,
        "updated": on_membership_upserted,
        "deleted": on_membership_deleted,
    },
    add_targets=add_targets,
    organization_id=organization_id,
    user_id=member_id,
    redact=redact,
)
