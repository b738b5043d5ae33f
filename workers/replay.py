"""Replaying stored events: each is set back to ``received``, its replay recorded, and its
stored payload published again through the broker (the same task message and ledger entry as
a delivery from the ingress), for the worker to apply like any other.

Stored payloads are trusted as they are: they were verified when they arrived, and their
signatures have long expired. ``clerk-sync events replay`` (``clerk_sync.cli.events``) parses
the filters and prints; the work is here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from sqlalchemy import Engine

from clerk_sync.broker.publisher import Publisher
from clerk_sync.core.queue import BrokerUnavailableError, QueuedEvent
from clerk_sync.core.settings import Settings
from models.database import transaction
from models.inbox import EventFilter, lock_for_replay, mark_replayed, matching_ids
from workers.retries import retry_transient


@dataclass(frozen=True)
class ReplayResult:
    replayed: int
    matched: int
    """Events named or matching the filter when the replay began."""
    missing: tuple[str, ...]
    """Ids named that do not exist or do not match the filter (only known when not stopped)."""
    error: str | None
    """Why the broker refused a message, which stopped the replay; None when it completed."""


def events_to_replay(engine: Engine, event_filter: EventFilter) -> list[str]:
    """The ids a replay works through: those named, else every event matching the filter."""
    with transaction(engine) as connection:
        return list(event_filter.svix_ids) or matching_ids(connection, event_filter)


def replay(
    settings: Settings,
    engine: Engine,
    event_filter: EventFilter,
    work: Sequence[str],
    batch_size: int,
    advance: Callable[[int], None] = lambda _events: None,
) -> ReplayResult:
    """Replay the events ``work`` names (``events_to_replay``) that still match
    ``event_filter``, in batches; ``advance`` is told the size of each batch done.

    Per batch, in one transaction: lock the rows that still match, then for each publish its
    stored payload and set it back to ``received`` with the replay recorded. The worker that
    takes a replayed message waits on the row lock until the commit, so it always sees the
    event as not finished and applies it. If the broker fails, the events published so far
    are committed as replayed and the rest keep their status. A transient database error
    (e.g. a lock wait beyond ``lock_timeout`` behind a busy worker) retries the batch; a copy
    published by the failed attempt is a harmless duplicate. Safe to repeat and safe under live
    traffic: applying an event twice, or in any order, converges.
    """
    publisher = Publisher(settings)
    still_matches = replace(event_filter, svix_ids=())  # the batch names the ids

    @retry_transient
    def replay_batch(batch: Sequence[str]) -> tuple[list[str], int, str | None]:
        replayed, error = 0, None
        with transaction(engine) as connection:
            locked = lock_for_replay(connection, batch, still_matches)
            now = datetime.now(UTC)
            for event in locked:
                assert event.payload is not None
                try:
                    publisher.publish(
                        QueuedEvent(
                            event.svix_id, event.payload, event.received_at_ms, event.event_type
                        ),
                        replay=True,
                    )
                except BrokerUnavailableError as failure:
                    error = str(failure)
                    break
                mark_replayed(connection, event.svix_id, now)
                replayed += 1
        return [event.svix_id for event in locked], replayed, error

    replayed = 0
    found: set[str] = set()
    error: str | None = None
    for batch in chunks(work, batch_size):
        locked, count, error = replay_batch(batch)
        found.update(locked)
        replayed += count
        advance(len(batch))
        if error is not None:
            break
    missing = () if error is not None else missing_ids(event_filter.svix_ids, found)
    return ReplayResult(replayed, len(work), missing, error)


def missing_ids(requested: Sequence[str], found: set[str]) -> tuple[str, ...]:
    """The ids of ``requested`` not in ``found``, in the order requested."""
    return tuple(svix_id for svix_id in requested if svix_id not in found)


def chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
