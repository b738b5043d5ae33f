"""``organizationInvitation.*`` events: ``created``, ``accepted`` and ``revoked`` are the same
upsert (Clerk sends no deletion)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from models.invitations import InvitationSnapshot, upsert_invitation
from models.tombstones import ORGANIZATION, USER
from models.unit_of_work import UnitOfWork
from workers.handlers.family import EventFamily, Handler, TargetSink
from workers.handlers.payloads import (
    Envelope,
    id_in,
    optional,
    require,
    require_timestamp,
    to_milliseconds,
)

INVITER_KEY = "public_inviter_data"
"""``data.public_inviter_data``: a copy of the inviter's profile (not stored)."""
ACCEPTED_BY_KEY = "user_id"
"""``data.user_id``: the user who accepted the invitation (``accepted`` only)."""


def invitation_snapshot(
    data: Mapping[str, Any], where: str = "data", *, status: str = "pending"
) -> InvitationSnapshot:
    """A Clerk OrganizationInvitation (webhook ``data`` or a Backend API item); ``status`` is
    what the event's action implies, should the payload omit its optional ``status``."""
    metadata = data.get("public_metadata")
    expires_at = optional(data, "expires_at", int)
    return InvitationSnapshot(
        id=require(data, "id", str, where),
        organization_id=require(data, "organization_id", str, where),
        email_address=optional(data, "email_address", str),
        role=require(data, "role", str, where),
        role_name=optional(data, "role_name", str),
        status=optional(data, "status", str) or status,
        public_metadata=dict(metadata) if isinstance(metadata, dict) else {},
        url=optional(data, "url", str),
        inviter_id=optional(data, "inviter_id", str),
        user_id=optional(data, ACCEPTED_BY_KEY, str),
        expires_at=None if expires_at is None else to_milliseconds(expires_at),
        created_at=require_timestamp(data, "created_at", where),
        updated_at=require_timestamp(data, "updated_at", where),
    )


def upserting(status: str) -> Handler:
    def on_invitation(work: UnitOfWork, envelope: Envelope, _workspace_key: str) -> None:
        upsert_invitation(work, invitation_snapshot(envelope.data, status=status))

    on_invitation.__doc__ = f"``organizationInvitation.*`` (``{status}`` unless it says)."
    return on_invitation


def accepted_by(data: Mapping[str, Any]) -> str | None:
    """``data.user_id``: the invitee, once accepted (the user the event is about)."""
    return id_in(data, ACCEPTED_BY_KEY) or None


def add_targets(targets: TargetSink, _action: str, data: Mapping[str, Any]) -> None:
    """The organization and, once accepted, the invitee (whose tombstone decides whether the
    email address is kept, and the stored payload erased)."""
    if organization_id := id_in(data, "organization_id"):
        targets.organizations.add(organization_id)
        targets.tombstones.add((ORGANIZATION, organization_id))
    if user_id := accepted_by(data):
        targets.users.add(user_id)
        targets.tombstones.add((USER, user_id))


PERSONAL_INVITER_FIELDS: Final = ("first_name", "last_name", "identifier", "image_url")


def redact(data: dict[str, Any]) -> None:
    """The invitee's email address, and the inviter's copied profile, erased to null."""
    if "email_address" in data:
        data["email_address"] = None
    inviter = data.get(INVITER_KEY)
    if isinstance(inviter, dict):
        for name in PERSONAL_INVITER_FIELDS:
            if name in inviter:
                inviter[name] = None


FAMILY = EventFamily(
    name="organizationInvitation",
    handlers={
        "created": upserting("pending"),
        "accepted": upserting("accepted"),
        "revoked": upserting("revoked"),
    },
    add_targets=add_targets,
    # ``data.organization_id``, read as for the types no family applies.
    organization_id=None,
    user_id=accepted_by,
    redact=redact,
)
