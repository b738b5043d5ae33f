"""What the ledger sweeper does besides re-publishing: give up on an event it re-published
``CLERK_SYNC_LEDGER_MAX_REDELIVERIES`` times (dead in the inbox, with why), and record in the
inbox the bodies the ingress set aside (another body under an svix id it held)."""

from __future__ import annotations

import logging

from clerk_sync.core.queue import Ledger, QueuedEvent
from models.claims import give_up, record_conflict_of
from models.database import transaction
from workers.processing import describe_event
from workers.runtime import WorkerRuntime

log = logging.getLogger("clerk_sync.worker")


def give_up_on(runtime: WorkerRuntime, event: QueuedEvent, redeliveries: int) -> None:
    """Dead-letter an event that ``redeliveries`` re-publications did not bring to an outcome
    (a worker that cannot read it, or keeps dying on it); the caller drops it from the ledger."""
    reason = (
        f"the ledger sweeper re-published this event {redeliveries} times "
        f"(CLERK_SYNC_LEDGER_MAX_REDELIVERIES) and no worker recorded an outcome; see the "
        f"worker logs for this svix id"
    )
    incoming = describe_event(event.svix_id, event.payload, event.received_at_ms)
    with transaction(runtime.engine) as connection:
        dead = give_up(connection, incoming, reason)
    if dead:
        log.error(
            "ledger: event dead-lettered after too many re-publications",
            extra={
                "svix_id": event.svix_id,
                "event_type": incoming.event_type,
                "redeliveries": redeliveries,
            },
        )


def record_conflicts(runtime: WorkerRuntime, ledger: Ledger, limit: int) -> int:
    """Record in the inbox (status ``conflict``) the bodies the ingress set aside; returns how
    many it took from the ledger."""
    conflicts = ledger.conflicts(limit)
    for _key, event in conflicts:
        incoming = describe_event(event.svix_id, event.payload, event.received_at_ms)
        with transaction(runtime.engine) as connection:
            record_conflict_of(connection, incoming, first_hash=None)
    ledger.drop_conflicts([key for key, _event in conflicts])
    return len(conflicts)
