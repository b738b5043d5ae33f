"""What the ledger sweeper does besides re-publishing: one sweeper at a time, whatever the
number of beats and workers (a lock in the broker); give up on an event it re-published
``CLERK_SYNC_LEDGER_MAX_REDELIVERIES`` times (dead in the inbox, with why), and record in the
inbox the bodies the ingress set aside (another body under an svix id it held)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import redis

from clerk_sync.core.queue import BROKER_ERRORS, Ledger, QueuedEvent
from models.claims import give_up, record_conflict_of
from models.database import transaction
from workers.processing import describe_event
from workers.runtime import WorkerRuntime

log = logging.getLogger("clerk_sync.worker")

SWEEP_LOCK_KEY: Final = "clerk-sync:lock:sweep"
SWEEP_LOCK_SECONDS: Final = 300
"""The lock's lease: a sweeper that dies holding it holds back the others this long at most (a
sweep takes at most ``SWEEP_BATCH`` entries: seconds)."""


@contextmanager
def one_sweeper(ledger: Ledger) -> Iterator[bool]:
    """Yield whether this sweeper holds the sweep lock, taken without waiting in the broker's
    Redis beside the ledger: redis-py's ``Lock`` (``SET NX PX`` with a random token; released
    with a compare-and-delete script, so a sweeper whose lease ran out never releases another's).

    With several beats (one per host) each sweep is scheduled several times, and workers on
    several hosts run them: without the lock two sweeps would read the same overdue entries and
    both re-publish them. Applying an event twice is harmless (the inbox keeps one outcome), but
    each re-publication counts towards ``CLERK_SYNC_LEDGER_MAX_REDELIVERIES``."""
    lock = ledger.client.lock(SWEEP_LOCK_KEY, timeout=SWEEP_LOCK_SECONDS, blocking=False)
    if not lock.acquire():
        log.info("ledger: another sweeper is running; this one skips its turn")
        yield False
        return
    try:
        yield True
    finally:
        try:
            lock.release()
        except (redis.exceptions.LockError, *BROKER_ERRORS) as error:
            # The lease ran out (another may have taken it), or the broker is gone: the lock
            # expires on its own.
            log.warning("ledger: sweep lock not released", extra={"error": type(error).__name__})


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
