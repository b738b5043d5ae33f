"""The inbox's vocabulary: what can become of an event (``EventStatus``), an event as it
arrives, and recording outcomes (claiming is ``models.claims``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from functools import cached_property
from typing import Any, Final

from sqlalchemy import Connection, bindparam, select, update

from models.conflicts import CONFLICT_STATUS
from models.event_ids import event_with_id, insert_event
from models.payload_hash import payload_hash
from models.statements import cached_statement
from models.tables import webhook_events


class EventStatus(StrEnum):
    """What became of a queued event. The first five are the inbox's statuses
    (``webhook_events.status``); the others are what the worker did with a message whose event
    did not end there (never stored)."""

    RECEIVED = "received"
    """Recorded, not (yet) applied: queued, or waiting for a retry."""
    APPLIED = "applied"
    SKIPPED = "skipped"
    """Of a type clerk-sync does not handle, or older than what the tables hold."""
    DEAD = "dead"
    """Dead-lettered: it cannot be applied, or its retries are exhausted."""
    CONFLICT = CONFLICT_STATUS
    """A body sent under the svix id of an earlier, different one: never applied. Its row is
    its own (``models.conflicts``: ``conflict_of`` names the first event's svix id),
    and a message carrying it is acknowledged and ignored, as a duplicate is."""
    DEFERRED = "deferred"
    """A batch left it as it was (another batch held a lock it needs): back to the buffer."""
    RETRY = "retry"
    """Failed transiently: published again with a countdown."""
    FAILED = "failed"
    """An unexpected error: logged, and the message acknowledged, as Celery does with a failed
    task (the ledger still holds the event)."""
    REQUEUE = "requeue"
    """Could not be handed on (the broker is down): the message goes back on the queue."""
    IGNORED = "ignored"
    """A second copy of an event in the same batch whose first copy was retried or failed."""


RECEIVED: Final = EventStatus.RECEIVED
APPLIED: Final = EventStatus.APPLIED
SKIPPED: Final = EventStatus.SKIPPED
DEAD: Final = EventStatus.DEAD

FINAL_OUTCOMES: Final = frozenset(
    {EventStatus.APPLIED, EventStatus.SKIPPED, EventStatus.DEAD, EventStatus.CONFLICT}
)
"""Outcomes committed for good: the event's ledger entry can go. (A ``conflict`` message's
entry is its own: the ingress queues no second body while the first is in the ledger.)"""

CONFLICT: Final = EventStatus.CONFLICT

FINISHED: Final = frozenset({APPLIED, SKIPPED, CONFLICT})
"""Statuses after which a redelivered copy of the event is acknowledged and ignored (``conflict``
is what a claim reports for a body that differs from the one recorded: never applied). A dead
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
    user_id: str | None = None
    """The user the event is about (a user event, or a membership's member), when it names one:
    how a deleted user's stored payloads are found to erase them."""
    document: Any = field(default=None, compare=False, repr=False)
    """The payload, parsed, if whoever described the event parsed it already (None otherwise):
    a worker reads each payload once, not once per step."""

    def row(self) -> dict[str, Any]:
        """The ``webhook_events`` columns the event itself gives (status and the rest are the
        recorder's)."""
        return {
            "svix_id": self.svix_id,
            "event_type": self.event_type,
            "payload": self.payload,
            "event_timestamp": self.event_timestamp,
            "received_at": self.received_at,
            "organization_id": self.organization_id,
            "user_id": self.user_id,
            "payload_hash": self.payload_hash,
        }

    @cached_property
    def payload_hash(self) -> str:
        """``webhook_events.payload_hash``: the SHA-256 of the payload, in hex."""
        return payload_hash(self.payload)


@dataclass(frozen=True)
class Outcome:
    """What became of one event, to be committed with its mutation."""

    svix_id: str
    status: str
    error: str | None = None


FINISH_UNNEST: Final = (
    "UPDATE webhook_events SET status = outcome.status, "
    "attempts = webhook_events.attempts + outcome.added, last_error = outcome.error, "
    "processed_at = outcome.processed_at "
    "FROM unnest(CAST(%(svix_ids)b AS text[]), CAST(%(statuses)b AS text[]), "
    "CAST(%(errors)b AS text[]), CAST(%(addeds)b AS integer[]), "
    "CAST(%(processed_ats)b AS timestamptz[])) "
    "AS outcome(svix_id, status, error, added, processed_at) "
    "JOIN webhook_event_ids AS known ON known.svix_id = outcome.svix_id "
    "WHERE webhook_events.svix_id = outcome.svix_id "
    "AND webhook_events.received_at = known.received_at"
)
"""PostgreSQL: a batch's outcomes in one statement joined to arrays (as ``CLAIM_UNNEST``), where
an UPDATE executed for each outcome cost the database a statement per event. Each row's
``received_at`` comes from ``webhook_event_ids``, so each is looked up in its one partition."""


def finish_events(
    connection: Connection,
    outcomes: Sequence[Outcome],
    *,
    attempts: int,
    presumed: frozenset[str],
) -> None:
    """``finish_event`` for many events (distinct svix ids), in one statement. The ``presumed``
    rows (``Claims.presumed``) hold ``applied`` after one attempt already: an applied outcome
    leaves them alone, a ``received`` one (an event given back unapplied) makes them as a new
    row would be, and any other sets the outcome of ``attempts``."""
    now = datetime.now(UTC)
    changes: list[tuple[Outcome, int, datetime | None]] = []
    for outcome in outcomes:
        if outcome.svix_id not in presumed:
            changes.append((outcome, attempts, now))
        elif outcome.status == RECEIVED:
            changes.append((outcome, -1, None))
        elif outcome.status != APPLIED or outcome.error is not None:
            changes.append((outcome, attempts - 1, now))
    if not changes:
        return
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(
            FINISH_UNNEST,
            {
                "svix_ids": [outcome.svix_id for outcome, _, _ in changes],
                "statuses": [outcome.status for outcome, _, _ in changes],
                "errors": [outcome.error for outcome, _, _ in changes],
                "addeds": [added for _, added, _ in changes],
                "processed_ats": [at for _, _, at in changes],
            },
        )
        return
    connection.execute(
        cached_statement(connection, "finish_events", _finish),
        [
            {
                "outcome_svix_id": outcome.svix_id,
                "outcome_status": outcome.status,
                "outcome_error": outcome.error,
                "outcome_attempts": added,
                "outcome_at": at,
            }
            for outcome, added, at in changes
        ],
    )


def _finish(_connection: Connection) -> Any:
    columns = webhook_events.c
    return (
        update(webhook_events)
        .where(event_with_id(bindparam("outcome_svix_id", type_=columns.svix_id.type)))
        .values(
            status=bindparam("outcome_status", type_=columns.status.type),
            attempts=columns.attempts + bindparam("outcome_attempts", type_=columns.attempts.type),
            last_error=bindparam("outcome_error", type_=columns.last_error.type),
            processed_at=bindparam("outcome_at", type_=columns.processed_at.type),
        )
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
        .where(event_with_id(svix_id))
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
    row = {**event.row(), "status": RECEIVED, "attempts": attempts, "last_error": error}
    if insert_event(connection, row):
        return
    connection.execute(
        update(webhook_events)
        .where(event_with_id(event.svix_id), webhook_events.c.status.not_in(FINISHED))
        .values(attempts=webhook_events.c.attempts + attempts, last_error=error)
    )


def event_status(connection: Connection, svix_id: str) -> str | None:
    status = connection.execute(
        select(webhook_events.c.status).where(event_with_id(svix_id))
    ).scalar_one_or_none()
    return None if status is None else str(status)
