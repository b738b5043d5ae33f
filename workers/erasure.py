"""Erasing a deleted user's personal data from the stored events.

When ``user.deleted`` is applied (``CLERK_SYNC_ERASE_ON_USER_DELETED``, on by default), and on
``clerk-sync events redact --user``, every stored event about the user (``webhook_events.user_id``:
its user events, and the membership events naming it as the member) keeps its ids, times and
structure, while its event family blanks the personal fields (``EventFamily.redact``: names,
email addresses, phone numbers, pictures, metadata) and the envelope loses the request's IP
address and user agent. The erased payloads still apply, to the same end: the user's tombstone
deletes whatever they re-create, so ``rebuild`` converges to the same tables.
"""

from __future__ import annotations

import json
from typing import Any, Final

from sqlalchemy import Connection

from clerk_sync.core.json_reading import read_payload
from models.redaction import payloads_about, rewrite_payloads
from workers.handlers import family_named_in

ENVELOPE_PERSONAL: Final = ("client_ip", "user_agent")
"""What ``event_attributes.http_request`` holds about whoever caused the event."""


def erase_user(connection: Connection, user_id: str) -> int:
    """Erase the personal data of the stored events about ``user_id``; returns how many
    payloads changed (none when done before: erasing is idempotent)."""
    rewritten = []
    for svix_id, event_type, payload in payloads_about(connection, user_id):
        erased = erased_payload(event_type, payload)
        if erased is not None and erased != payload:
            rewritten.append((svix_id, erased))
    rewrite_payloads(connection, rewritten)
    return len(rewritten)


def erased_payload(event_type: str | None, payload: str) -> str | None:
    """``payload`` without its personal fields; None when it cannot be read (left as it is:
    such an event was dead-lettered, and holds nothing the tables took)."""
    try:
        document: Any = read_payload(payload)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    attributes = document.get("event_attributes")
    request = attributes.get("http_request") if isinstance(attributes, dict) else None
    if isinstance(request, dict):
        for name in ENVELOPE_PERSONAL:
            if name in request:
                request[name] = None
    data = document.get("data")
    family = family_named_in(event_type or "")
    if isinstance(data, dict) and family is not None and family.redact is not None:
        family.redact(data)
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False)
