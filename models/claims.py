"""Claiming events: an event's inbox row written if it is new, and locked, before the event is
applied; what a claim finds (finished already, another body under the same svix id, new)
decides what becomes of the delivery."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import Connection, and_, insert, select

from models.conflicts import record_conflict
from models.event_ids import claim_ids, event_with_id, forget_orphans, insert_event
from models.events import (
    APPLIED,
    CONFLICT,
    DEAD,
    FINISHED,
    RECEIVED,
    IncomingEvent,
    finish_event,
)
from models.statements import cached_statement
from models.tables import webhook_event_ids, webhook_events

KNOWN_ID: Final = and_(
    webhook_event_ids.c.svix_id == webhook_events.c.svix_id,
    webhook_event_ids.c.received_at == webhook_events.c.received_at,
)
"""An inbox row and its id row: the join that reads a row by svix id in its one partition."""


def claim_event(connection: Connection, event: IncomingEvent) -> str:
    """Record the event if it is new and lock its row; returns its current status.

    The row lock makes two workers holding copies of one event take turns, so the second sees
    the first one's outcome and does not apply the event again.
    """
    values = {**event.row(), "status": RECEIVED, "attempts": 0}
    locked = (
        select(webhook_events.c.status, webhook_events.c.payload_hash)
        .where(event_with_id(event.svix_id))
        .with_for_update()
    )
    if not insert_event(connection, values):
        row = connection.execute(locked).one_or_none()
        if row is None:
            forget_orphans(connection, [event.svix_id])
            insert_event(connection, values)
    row = connection.execute(locked).one()
    if _conflicts(event, row.payload_hash):
        record_conflict_of(connection, event, row.payload_hash)
        return CONFLICT
    return str(row.status)


CLAIM_CHUNK: Final = 500
"""Rows per statement when many events are claimed at once (well inside parameter limits)."""


@dataclass(frozen=True)
class Claims:
    """What ``claim_events`` found: each event's status by svix id (``received`` for a row the
    claim inserted), and the rows it inserted, which hold ``applied`` already."""

    statuses: dict[str, str]
    presumed: frozenset[str] = frozenset()


def claim_events(connection: Connection, events: Sequence[IncomingEvent]) -> Claims:
    """``claim_event`` for many events in one go: record the new ones, lock every row and return
    each event's current status by svix id.

    First the new rows are inserted, in svix-id order: a row this transaction inserts is,
    uncommitted, locked against every other transaction. Then the rows that were there already
    are locked and read, in svix-id order too (one statement each, in the common case of no
    earlier copies just the first). Two transactions claiming overlapping sets (copies of the
    same events on two workers) therefore wait for each other instead of deadlocking.

    The new rows are inserted as the caller expects to finish them, ``applied`` after one
    attempt, and ``finish_events`` (given ``Claims.presumed``) changes only those that end
    otherwise. Other transactions only ever see a row as committed, so this
    differs from inserting ``received`` and updating every row in nothing but cost: the update
    rewrites the row and all its index entries (``status`` is indexed), which cost PostgreSQL
    more per event than the insert.
    """
    unique = sorted({event.svix_id: event for event in events}.values(), key=_svix_id)
    chunks = [unique[start : start + CLAIM_CHUNK] for start in range(0, len(unique), CLAIM_CHUNK)]
    statuses: dict[str, str] = {}
    for chunk in chunks:
        statuses.update(dict.fromkeys(_insert_new(connection, chunk), RECEIVED))
    presumed = frozenset(statuses)
    existing = [event.svix_id for event in unique if event.svix_id not in statuses]
    by_id = {event.svix_id: event for event in unique}
    conflicts: list[tuple[IncomingEvent, str]] = []
    for start in range(0, len(existing), CLAIM_CHUNK):
        rows = connection.execute(
            select(webhook_events.c.svix_id, webhook_events.c.status, webhook_events.c.payload_hash)
            .select_from(webhook_events.join(webhook_event_ids, KNOWN_ID))
            .where(webhook_event_ids.c.svix_id.in_(existing[start : start + CLAIM_CHUNK]))
            .order_by(webhook_events.c.svix_id)
            .with_for_update(of=webhook_events)
        )
        for row in rows:
            svix_id = str(row.svix_id)
            if _conflicts(by_id[svix_id], row.payload_hash):
                conflicts.append((by_id[svix_id], row.payload_hash))
                statuses[svix_id] = CONFLICT
            else:
                statuses[svix_id] = str(row.status)
    orphans = [svix_id for svix_id in existing if svix_id not in statuses]
    if orphans:
        forget_orphans(connection, orphans)
        reclaimed = _insert_new(connection, [by_id[svix_id] for svix_id in orphans])
        statuses.update(dict.fromkeys(reclaimed, RECEIVED))
        presumed = presumed | frozenset(reclaimed)
    for event, first_hash in conflicts:
        record_conflict_of(connection, event, first_hash)
    return Claims(statuses, presumed)


def _conflicts(event: IncomingEvent, recorded_hash: str | None) -> bool:
    """Whether the row recorded under the event's svix id holds another body (rows recorded
    before revision 0004 have no hash, and are taken as the same body)."""
    return recorded_hash is not None and recorded_hash != event.payload_hash


def record_conflict_of(
    connection: Connection, event: IncomingEvent, first_hash: str | None
) -> None:
    """Record ``event`` as another body under an svix id whose first body won (status
    ``conflict``; ``first_hash`` is the first body's hash, when known)."""
    record_conflict(
        connection,
        svix_id=event.svix_id,
        payload=event.payload,
        body_hash=event.payload_hash,
        first_hash=first_hash,
        event_type=event.event_type,
        event_timestamp=event.event_timestamp,
        received_at=event.received_at,
        organization_id=event.organization_id,
        user_id=event.user_id,
    )


def give_up(connection: Connection, event: IncomingEvent, reason: str) -> bool:
    """Dead-letter an event that never reached an outcome (the ledger sweeper, after
    re-publishing it ``CLERK_SYNC_LEDGER_MAX_REDELIVERIES`` times), with ``reason`` as its
    error, unless it is finished meanwhile. Returns whether it was dead-lettered."""
    if claim_event(connection, event) in FINISHED:
        return False
    finish_event(connection, event.svix_id, DEAD, attempts=0, error=reason)
    return True


CLAIM_UNNEST: Final = (
    "WITH incoming AS (SELECT * FROM unnest(CAST(%(svix_ids)b AS text[]), "
    "CAST(%(event_types)b AS text[]), CAST(%(payloads)b AS text[]), "
    "CAST(%(event_timestamps)b AS bigint[]), CAST(%(received_ats)b AS timestamptz[]), "
    "CAST(%(organization_ids)b AS text[]), CAST(%(user_ids)b AS text[]), "
    "CAST(%(payload_hashes)b AS text[])) "
    "AS incoming(svix_id, event_type, payload, event_timestamp, received_at, organization_id, "
    "user_id, payload_hash)), "
    "claimed AS (INSERT INTO webhook_event_ids (svix_id, received_at) "
    "SELECT svix_id, received_at FROM incoming ORDER BY svix_id "
    "ON CONFLICT (svix_id) DO NOTHING RETURNING svix_id) "
    "INSERT INTO webhook_events (svix_id, event_type, status, attempts, payload, "
    "event_timestamp, received_at, processed_at, organization_id, user_id, payload_hash) "
    "SELECT svix_id, event_type, %(status)b, CAST(%(attempts)b AS integer), payload, "
    "event_timestamp, received_at, CAST(%(processed_at)b AS timestamptz), organization_id, "
    "user_id, payload_hash "
    "FROM incoming JOIN claimed USING (svix_id) ORDER BY svix_id RETURNING svix_id"
)
"""PostgreSQL: the rows as one array per column, so the statement's text is the same for every
batch (parsed and planned once per connection, where a multi-row VALUES list is new text, to
convert and plan, for every batch size). The arrays go in psycopg's binary format (``%b``):
in text format every payload would be quoted and escaped character by character, which cost
more than the rest of the claim. The ids are claimed first (``models.event_ids``), in svix-id
order, and only the claimed ones inserted into the (partitioned) inbox, in one statement."""


def _insert_new(connection: Connection, events: Sequence[IncomingEvent]) -> list[str]:
    """Insert the events that are new (``events`` in svix-id order), ``applied`` after one
    attempt (``claim_events``); returns their svix ids."""
    processed_at = datetime.now(UTC)
    if connection.dialect.name == "postgresql":
        # The driver's own statement (psycopg's binary ``%b`` parameters, which SQLAlchemy's
        # statements do not offer), through SQLAlchemy, which still translates its errors.
        inserted = connection.exec_driver_sql(
            CLAIM_UNNEST,
            {
                "status": APPLIED,
                "attempts": 1,
                "processed_at": processed_at,
                "svix_ids": [event.svix_id for event in events],
                "event_types": [event.event_type for event in events],
                "payloads": [event.payload for event in events],
                "event_timestamps": [event.event_timestamp for event in events],
                "received_ats": [event.received_at for event in events],
                "organization_ids": [event.organization_id for event in events],
                "user_ids": [event.user_id for event in events],
                "payload_hashes": [event.payload_hash for event in events],
            },
        )
        return [str(svix_id) for svix_id in inserted.scalars()]
    # The ids claimed, then the claimed rows inserted: one INSERT ... VALUES (...), (...) each
    # ("insertmanyvalues").
    rows = [
        {**event.row(), "status": APPLIED, "attempts": 1, "processed_at": processed_at}
        for event in events
    ]
    claimed = claim_ids(connection, rows)
    new_rows = [row for row in rows if row["svix_id"] in claimed]
    if new_rows:
        connection.execute(
            cached_statement(connection, "claim_events", _insert_new_statement), new_rows
        )
    return [str(row["svix_id"]) for row in new_rows]


def _insert_new_statement(_connection: Connection) -> Any:
    return insert(webhook_events)


def _svix_id(event: IncomingEvent) -> str:
    return event.svix_id
