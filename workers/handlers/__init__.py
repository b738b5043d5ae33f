"""The registry: event type → handler, built from the event families (each handler module's
``FAMILY``, the one place its payload layout is read). Types not listed are recorded as
``skipped``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from models.locks import lock_keys, roles_lock_keys, stronger
from workers.handlers import (
    domains,
    invitations,
    memberships,
    organizations,
    permissions,
    roles,
    users,
)
from workers.handlers.family import EventFamily, Handler

__all__ = [
    "FAMILIES",
    "HANDLERS",
    "EventFamily",
    "Handler",
    "Targets",
    "family_named_in",
    "organization_id_of",
    "user_id_of",
]

FAMILIES: Final[dict[str, EventFamily]] = {
    family.name: family
    for family in (
        organizations.FAMILY,
        memberships.FAMILY,
        users.FAMILY,
        roles.FAMILY,
        permissions.FAMILY,
        invitations.FAMILY,
        domains.FAMILY,
    )
}
"""Event family by name, the part of an event type before its first dot."""

FAMILY_OF_TYPE: Final[dict[str, EventFamily]] = {
    event_type: family for family in FAMILIES.values() for event_type in family.event_types()
}

HANDLERS: Final[dict[str, Handler]] = {
    event_type: handler
    for family in FAMILIES.values()
    for event_type, handler in family.event_types().items()
}


def family_named_in(event_type: str) -> EventFamily | None:
    """The family whose name prefixes ``<name>.<action>``, whether or not it handles the action."""
    name, dot, _ = event_type.partition(".")
    return FAMILIES.get(name) if dot else None


def organization_id_of(event_type: str, data: Mapping[str, Any]) -> str | None:
    """The organization an event concerns, as its family reads it; for other types (invitations,
    domains) and families whose layout names none, ``data.organization_id``. None when absent."""
    family = family_named_in(event_type)
    if family is not None and family.organization_id is not None:
        return family.organization_id(data)
    candidate = data.get("organization_id")
    return candidate if isinstance(candidate, str) else None


def user_id_of(event_type: str, data: Mapping[str, Any]) -> str | None:
    """The user an event is about, as its family reads it; None for other types."""
    family = family_named_in(event_type)
    if family is not None and family.user_id is not None:
        return family.user_id(data)
    return None


@dataclass
class Targets:
    """What applying some payloads touches, as far as the payloads name it: the organizations
    and users whose locks the handlers take (a batch takes them all up front, in order:
    ``UnitOfWork.take_locks``), and the tombstones and (organization, user) membership holders
    they look up (read up front too: ``UnitOfWork.read_ahead``). Whatever is missing or malformed
    here makes the handler dead-letter the event anyway."""

    organizations: set[str] = field(default_factory=set)
    users: set[str] = field(default_factory=set)
    tombstones: set[tuple[str, str]] = field(default_factory=set)
    holders: set[tuple[str, str]] = field(default_factory=set)
    entities: set[str] = field(default_factory=set)
    roles: str | None = None

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
        self.entities |= other.entities
        self.roles = stronger(self.roles, other.roles)

    def lock_keys(self) -> set[str]:
        roles = roles_lock_keys(self.roles)
        return lock_keys(self.organizations, self.users) | self.entities | roles

    def add(self, document: Any) -> None:
        """Add what the handler of this (parsed) payload touches, as its family reads it."""
        if not isinstance(document, dict):
            return
        event_type = document.get("type")
        data = document.get("data")
        if not isinstance(event_type, str) or not isinstance(data, dict):
            return
        family = FAMILY_OF_TYPE.get(event_type)
        if family is not None:
            family.add_targets(self, event_type.partition(".")[2], data)
