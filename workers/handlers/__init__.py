"""Event type → handler. Types not listed here are recorded as ``skipped``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from sqlalchemy import Connection

from workers.handlers.memberships import on_membership_deleted, on_membership_upserted
from workers.handlers.organizations import on_organization_deleted, on_organization_upserted
from workers.handlers.payloads import Envelope
from workers.handlers.users import on_user_deleted, on_user_upserted

Handler = Callable[[Connection, Envelope, str], None]

HANDLERS: Final[dict[str, Handler]] = {
    "organization.created": on_organization_upserted,
    "organization.updated": on_organization_upserted,
    "organization.deleted": on_organization_deleted,
    "organizationMembership.created": on_membership_upserted,
    "organizationMembership.updated": on_membership_upserted,
    "organizationMembership.deleted": on_membership_deleted,
    "user.created": on_user_upserted,
    "user.updated": on_user_upserted,
    "user.deleted": on_user_deleted,
}


def lock_targets(document: Any) -> tuple[set[str], set[str]]:
    """The organizations and users whose locks the handler of this (parsed) payload takes, as
    far as the payload names them: a batch of events takes them all up front, in order
    (``models.database.lock_organizations_and_users``). Whatever is missing or malformed here
    makes the handler dead-letter the event anyway."""
    organizations: set[str] = set()
    users: set[str] = set()
    if not isinstance(document, dict):
        return organizations, users
    event_type = document.get("type")
    data = document.get("data")
    if not isinstance(event_type, str) or not isinstance(data, dict):
        return organizations, users
    family, _, action = event_type.partition(".")
    if event_type not in HANDLERS:
        return organizations, users
    if family == "organization":
        _add(organizations, data.get("id"))
    elif family == "organizationMembership":
        organization = data.get("organization")
        if isinstance(organization, dict):
            _add(organizations, organization.get("id"))
        member = data.get("public_user_data")
        if action != "deleted" and isinstance(member, dict):
            _add(users, member.get("user_id"))
    elif family == "user":
        _add(users, data.get("id"))
    return organizations, users


def _add(target: set[str], value: Any) -> None:
    if isinstance(value, str) and value:
        target.add(value)
