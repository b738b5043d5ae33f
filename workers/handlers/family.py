"""What an event family (``organization``, ``organizationMembership``, ``user``) tells the rest
of the worker, from its one reading of the payload: its handlers, what they touch, and the
organization an event concerns."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from models.unit_of_work import UnitOfWork
from workers.handlers.payloads import Envelope

Handler = Callable[[UnitOfWork, Envelope, str], None]


class TargetSink(Protocol):
    """Where a family adds what a handler touches (``workers.handlers.Targets``)."""

    organizations: set[str]
    users: set[str]
    tombstones: set[tuple[str, str]]
    holders: set[tuple[str, str]]
    entities: set[str]
    """Lock keys of entities no organization lock covers (``models.locks.entity_key``)."""
    roles: str | None
    """The mode of the roles lock the handler takes (``models.locks.SHARED``/``EXCLUSIVE``)."""


@dataclass(frozen=True)
class EventFamily:
    """The event types ``<name>.<action>`` one handler module applies."""

    name: str
    handlers: Mapping[str, Handler]
    """Handler by action (``created``, ``updated``, ``deleted``)."""
    add_targets: Callable[[TargetSink, str, Mapping[str, Any]], None]
    """Add, for an action and its ``data``, what the handler touches as far as the payload names
    it. Never raises: whatever is missing or malformed makes the handler dead-letter the event."""
    organization_id: Callable[[Mapping[str, Any]], str | None] | None = None
    """The organization an event's ``data`` concerns (None when it names none). None when the
    family's own layout names no organization: then ``data.organization_id`` is read, as for the
    types no family applies."""

    user_id: Callable[[Mapping[str, Any]], str | None] | None = None
    """The user an event's ``data`` is about (a user, a membership's member), if any."""
    redact: Callable[[dict[str, Any]], None] | None = None
    """Blank, in place, the personal fields of an event's ``data`` about a deleted user,
    keeping what applying it needs (ids, times): the event then applies to the same end."""

    def event_types(self) -> dict[str, Handler]:
        return {f"{self.name}.{action}": handler for action, handler in self.handlers.items()}
