"""Event type → handler. Types not listed here are recorded as ``skipped``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import Connection

from models.database import lock_keys
from models.tombstones import ORGANIZATION, ORGANIZATION_MEMBERSHIP, USER
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


@dataclass
class Targets:
    """What applying some payloads touches, as far as the payloads name it: the organizations
    and users whose locks the handlers take (a batch takes them all up front, in order:
    ``models.database.holding_locks``), and the tombstones and (organization, user) membership
    holders they look up (read up front too: ``models.known``). Whatever is missing or malformed
    here makes the handler dead-letter the event anyway."""

    organizations: set[str] = field(default_factory=set)
    users: set[str] = field(default_factory=set)
    tombstones: set[tuple[str, str]] = field(default_factory=set)
    holders: set[tuple[str, str]] = field(default_factory=set)

    @classmethod
    def of(cls, document: Any) -> Targets:
        targets = cls()
        targets.add(document)
        return targets

    def merge(self, other: Targets) -> None:
        self.organizations |= other.organizations
        self.users |= other.users
        self.tombstones |= other.tombstones
        self.holders |= other.holders

    def lock_keys(self) -> set[str]:
        return lock_keys(self.organizations, self.users)

    def add(self, document: Any) -> None:
        """Add what the handler of this (parsed) payload touches."""
        if not isinstance(document, dict):
            return
        event_type = document.get("type")
        data = document.get("data")
        if not isinstance(event_type, str) or not isinstance(data, dict):
            return
        if event_type not in HANDLERS:
            return
        family, _, action = event_type.partition(".")
        if family == "organization":
            organization_id = _id(data.get("id"))
            if organization_id:
                self.organizations.add(organization_id)
                self.tombstones.add((ORGANIZATION, organization_id))
        elif family == "organizationMembership":
            organization = data.get("organization")
            member = data.get("public_user_data")
            organization_id = _id(organization.get("id")) if isinstance(organization, dict) else ""
            user_id = _id(member.get("user_id")) if isinstance(member, dict) else ""
            membership_id = _id(data.get("id"))
            if organization_id:
                self.organizations.add(organization_id)
                self.tombstones.add((ORGANIZATION, organization_id))
                if membership_id:
                    self.tombstones.add((ORGANIZATION_MEMBERSHIP, membership_id))
            if action != "deleted" and user_id:
                self.users.add(user_id)
                self.tombstones.add((USER, user_id))
                if organization_id:
                    self.holders.add((organization_id, user_id))
        elif family == "user":
            user_id = _id(data.get("id"))
            if user_id:
                self.users.add(user_id)
                self.tombstones.add((USER, user_id))


def _id(value: Any) -> str:
    """The id, or "" when the payload holds none."""
    return value if isinstance(value, str) else ""
