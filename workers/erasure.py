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

import logging
from collections.abc import Sequence
from typing import Any, Final

from sqlalchemy import Connection, Engine

from clerk_sync.core.json_reading import read_payload
from models.changes.erasure import erase_from_feed
from models.database import transaction
from models.events import IncomingEvent
from models.redaction import (
    payloads_about,
    request_erasure,
    rewrite_payloads,
    take_erasure_requests,
)
from models.statements import dump_json
from models.tombstones import USER
from models.unit_of_work import UnitOfWork
from workers.handlers import family_named_in

log = logging.getLogger("clerk_sync.worker")

ENVELOPE_PERSONAL: Final = ("client_ip", "user_agent")
"""What ``event_attributes.http_request`` holds about whoever caused the event."""


class Erasures:
    """What the events of one transaction leave to erase. An event about a user deleted before
    it has its own payload erased in the transaction (its row is the transaction's, claimed and
    locked). A ``user.deleted`` records an erasure request in the transaction; the user's other
    events are erased by ``erase_requested``, which beat runs every minute
    (``ERASE_TASK``), in bulk and off the batches' path and locks: rewriting every stored event
    of a deleted user cost the worker about a tenth of its throughput (``bench/README.md``)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.deleted_users: list[str] = []
        self.rewrites: list[tuple[str, str]] = []

    def note(self, work: UnitOfWork, event: IncomingEvent) -> None:
        """After ``event`` was applied."""
        if not self.enabled or event.user_id is None:
            return
        if event.event_type == "user.deleted":
            self.deleted_users.append(event.user_id)
        elif work.tombstone(USER, event.user_id) is not None:
            erased = erased_payload(event.event_type, event.payload)
            if erased is not None and erased != event.payload:
                self.rewrites.append((event.svix_id, erased))

    def write(self, connection: Connection) -> None:
        """In the transaction, before it commits."""
        rewrite_payloads(connection, self.rewrites)
        request_erasure(connection, self.deleted_users)


ERASE_TASK: Final = "clerk_sync.erase_deleted_users"
ERASE_BATCH: Final = 100
"""Users erased per transaction."""


def erase_requested(engine: Engine) -> int:
    """Erase the stored events of every user whose erasure was requested, a batch of users per
    transaction (two workers running it at once take different users); returns how many users.
    A request is gone only with its erasure committed."""
    erased = 0
    while True:
        with transaction(engine) as connection:
            users = take_erasure_requests(connection, ERASE_BATCH)
            if not users:
                return erased
            erase_users(connection, users)
        erased += len(users)
        log.info("stored events of deleted users erased", extra={"users": len(users)})


def erase_user(connection: Connection, user_id: str) -> int:
    """Erase the personal data of the stored events about ``user_id``; returns how many
    payloads changed (none when done before: erasing is idempotent)."""
    return erase_users(connection, [user_id])


def erase_users(connection: Connection, user_ids: Sequence[str]) -> int:
    """``erase_user`` for many users, in one query and one batch of updates; the change feed's
    snapshots about them too (``models.changes.erasure``)."""
    rewritten = []
    for svix_id, event_type, payload in payloads_about(connection, user_ids):
        erased = erased_payload(event_type, payload)
        if erased is not None and erased != payload:
            rewritten.append((svix_id, erased))
    rewrite_payloads(connection, rewritten)
    erase_from_feed(connection, user_ids)
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
    return dump_json(document)
