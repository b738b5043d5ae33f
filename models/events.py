"""The inbox: every webhook event, keyed by svix-id, with what became of it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from sqlalchemy import Connection, select, update

from models.database import insert_for
from models.tables import webhook_events

RECEIVED: Final = "received"
APPLIED: Final = "applied"
SKIPPED: Final = "skipped"
DEAD: Final = "dead"

FINISHED: Final = frozenset({APPLIED, SKIPPED})
"""Statuses after which a redelivered copy of the event is acknowledged and ignored. A dead
event is not finished: delivering it again (a replay) is how it gets another chance."""


@dataclass(frozen=True)
class IncomingEvent:
    svix_id: str
    payload: str
    received_at: datetime
    event_type: str | None
    event_timestamp: int | None
    organization_id: str | None = None
    """The organization the event concerns, when the payload names one."""


def claim_event(connection: Connection, event: IncomingEvent) -> str:
    """Record the event if it is new and lock its row; returns its current status.

    The row lock makes two workers holding copies of one event take turns, so the second sees
    the first one's outcome and does not apply the event again.
    """
    connection.execute(
        insert_for(connection, webhook_events)
        .values(
            svix_id=event.svix_id,
            event_type=event.event_type,
            status=RECEIVED,
            attempts=0,
            payload=event.payload,
            event_timestamp=event.event_timestamp,
            received_at=event.received_at,
            organization_id=event.organization_id,
        )
        .on_conflict_do_nothing(index_elements=[webhook_events.c.svix_id])
    )
    return str(
        connection.execute(
            select(webhook_events.c.status)
            .where(webhook_events.c.svix_id == event.svix_id)
            .with_for_update()
        ).scalar_one()
    )


def finish_event(
    connection: Connection,
    svix_id: str,
    status: str,
    *,
    attempts: int,
    error: str | None = None,
) -> None:
    """Set the outcome in the same transaction as the mutation it describes."""
    connection.execute(
        update(webhook_events)
        .where(webhook_events.c.svix_id == svix_id)
        .values(
            status=status,
            attempts=webhook_events.c.attempts + attempts,
            last_error=error,
            processed_at=datetime.now(UTC),
        )
    )


def note_failed_attempt(
    connection: Connection, event: IncomingEvent, *, attempts: int, error: str
) -> None:
    """Make a transient failure visible (status stays ``received``) while retries continue."""
    statement = insert_for(connection, webhook_events).values(
        svix_id=event.svix_id,
        event_type=event.event_type,
        status=RECEIVED,
        attempts=attempts,
        last_error=error,
        payload=event.payload,
        event_timestamp=event.event_timestamp,
        received_at=event.received_at,
        organization_id=event.organization_id,
    )
    statement = statement.on_conflict_do_update(
        index_elements=[webhook_events.c.svix_id],
        set_={
            "attempts": webhook_events.c.attempts + attempts,
            "last_error": statement.excluded.last_error,
        },
        where=webhook_events.c.status.not_in(FINISHED),
    )
    connection.execute(statement)


def event_status(connection: Connection, svix_id: str) -> str | None:
    status = connection.execute(
        select(webhook_events.c.status).where(webhook_events.c.svix_id == svix_id)
    ).scalar_one_or_none()
    return None if status is None else str(status)
