"""What the inbox records about an arriving event, read from its payload as far as the payload
allows: type, envelope time, and the organization and user it concerns (as the event families
read them). Whatever the payload says, the row stays writable."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from clerk_sync.core.json_reading import read_payload
from models.events import IncomingEvent
from workers.handlers import organization_id_of, user_id_of
from workers.handlers.payloads import to_milliseconds


def describe_event(svix_id: str, payload: str, received_at_ms: int) -> IncomingEvent:
    """What the inbox records about an event, read as far as the payload allows."""
    event_type: str | None = None
    event_timestamp: int | None = None
    organization_id: str | None = None
    user_id: str | None = None
    try:
        document: Any = read_payload(payload)
    except ValueError:
        document = None
    if isinstance(document, dict):
        raw_type = document.get("type")
        # Cut to the column and without NUL, which PostgreSQL text cannot hold: the inbox row
        # must be writable whatever the payload says.
        event_type = raw_type.replace("\x00", "")[:128] if isinstance(raw_type, str) else None
        event_timestamp = _storable_timestamp(document.get("timestamp"))
        organization_id = organization_of(event_type, document)
        user_id = user_of(event_type, document)
    return IncomingEvent(
        svix_id=svix_id,
        payload=payload,
        received_at=datetime.fromtimestamp(received_at_ms / 1000, UTC),
        event_type=event_type,
        event_timestamp=event_timestamp,
        organization_id=organization_id,
        user_id=user_id,
        document=document,
    )


MAX_ID_LENGTH = 64
"""``webhook_events.organization_id`` and ``user_id`` are ``String(64)``, like every id column."""


def organization_of(event_type: str | None, document: dict[str, Any]) -> str | None:
    """The organization an event concerns, as its event family reads it (``data.id`` for
    ``organization.*``, ``data.organization.id`` for ``organizationMembership.*``), else
    ``data.organization_id`` for types that carry one (invitations, domains): see
    ``workers.handlers.organization_id_of``. None when absent, or when the value could not be
    stored (too long, NUL): recording the event matters more than this column.
    (The 0002 migration backfills stored events with a frozen copy of this function.)"""
    return _storable_id(event_type, document, organization_id_of)


def user_of(event_type: str | None, document: dict[str, Any]) -> str | None:
    """The user an event is about, as its family reads it (``workers.handlers.user_id_of``);
    None when absent or not storable. (The 0005 migration backfills stored events with a frozen
    copy of this function.)"""
    return _storable_id(event_type, document, user_id_of)


def _storable_id(
    event_type: str | None,
    document: dict[str, Any],
    read: Callable[[str, Mapping[str, Any]], str | None],
) -> str | None:
    """The id ``read`` finds in the event's ``data``, if a column can hold it."""
    data = document.get("data")
    if event_type is None or not isinstance(data, dict):
        return None
    candidate = read(event_type, data)
    if candidate is not None and 0 < len(candidate) <= MAX_ID_LENGTH and "\x00" not in candidate:
        return candidate
    return None


BIGINT_RANGE = range(-(2**63), 2**63)
"""What ``webhook_events.event_timestamp`` (BIGINT) can hold."""


def _storable_timestamp(raw: Any) -> int | None:
    """The envelope time in milliseconds, or None when it is not an integer or would not fit the
    column. Like the cut-down ``event_type``, this keeps the inbox row writable whatever the
    payload says: an out-of-range timestamp used to make ``claim_event`` itself fail, so the
    event was never recorded (nor dead-lettered) and the task failed with a non-transient error.
    """
    if not isinstance(raw, int) or isinstance(raw, bool):
        return None
    milliseconds = to_milliseconds(raw)
    return milliseconds if milliseconds in BIGINT_RANGE else None
