"""Operator queries on the inbox (``webhook_events``): list and filter, show one event, prepare a
replay, purge old events, summarise for ``status``, read the log back for ``rebuild``.

Knows SQLAlchemy and the tables, neither Flask nor Celery: publishing a replayed event is the
caller's business (``workers.replay``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Row,
    Table,
    and_,
    delete,
    func,
    not_,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.exc import OperationalError

from models.database import transaction
from models.event_ids import event_with_id
from models.events import APPLIED, CONFLICT, DEAD, RECEIVED, SKIPPED
from models.partitions import drop_partition, droppable, is_partitioned
from models.tables import (
    organization_memberships,
    organizations,
    tombstones,
    webhook_event_ids,
    webhook_events,
)
from models.tombstones import ORGANIZATION, ORGANIZATION_MEMBERSHIP

STATUSES: Final = (RECEIVED, APPLIED, SKIPPED, DEAD, CONFLICT)

PURGEABLE: Final = (APPLIED, SKIPPED)
"""What ``purge`` deletes by default. Dead letters stay until replayed or purged explicitly;
``received`` events are in flight and are never purged."""

PURGE_BATCH: Final = 1000

LOCK_NOT_AVAILABLE: Final = "55P03"
"""PostgreSQL's SQLSTATE for a lock not had within ``lock_timeout``."""

log = logging.getLogger("clerk_sync.models")


def as_utc(moment: datetime | None) -> datetime | None:
    """Aware UTC datetimes in and out: SQLite stores UTC wall time and returns it naive."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def unix_milliseconds(moment: datetime) -> int:
    """``moment`` as Unix milliseconds, the unit of Clerk's timestamps in the tables."""
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True)
class EventFilter:
    """Which events an operator means. Empty fields do not filter.

    ``event_types`` are exact names, or a prefix ending in ``*`` (``organizationMembership.*``).
    ``since``/``until`` bound the receipt time, or the envelope time if ``by_event_time``
    (``since`` inclusive, ``until`` exclusive).
    """

    svix_ids: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    event_types: tuple[str, ...] = ()
    organization_id: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    by_event_time: bool = False

    @property
    def is_empty(self) -> bool:
        return not (
            self.svix_ids
            or self.statuses
            or self.event_types
            or self.organization_id
            or self.since
            or self.until
        )

    def conditions(self) -> list[ColumnElement[bool]]:
        events = webhook_events.c
        conditions: list[ColumnElement[bool]] = []
        if self.svix_ids:
            conditions.append(events.svix_id.in_(self.svix_ids))
        if self.statuses:
            conditions.append(events.status.in_(self.statuses))
        if self.event_types:
            exact = [name for name in self.event_types if not name.endswith("*")]
            prefixes = [name.removesuffix("*") for name in self.event_types if name.endswith("*")]
            alternatives: list[ColumnElement[bool]] = [
                events.event_type.startswith(prefix, autoescape=True) for prefix in prefixes
            ]
            if exact:
                alternatives.append(events.event_type.in_(exact))
            conditions.append(or_(*alternatives))
        if self.organization_id:
            conditions.append(events.organization_id == self.organization_id)
        if self.by_event_time:
            if self.since is not None:
                conditions.append(events.event_timestamp >= unix_milliseconds(self.since))
            if self.until is not None:
                conditions.append(events.event_timestamp < unix_milliseconds(self.until))
        else:
            if self.since is not None:
                conditions.append(events.received_at >= as_utc(self.since))
            if self.until is not None:
                conditions.append(events.received_at < as_utc(self.until))
        return conditions


@dataclass(frozen=True)
class StoredEvent:
    """One inbox row, times as aware UTC datetimes (``payload`` only when asked for)."""

    svix_id: str
    event_type: str | None
    status: str
    attempts: int
    last_error: str | None
    event_timestamp: int | None
    received_at: datetime
    processed_at: datetime | None
    organization_id: str | None
    replay_count: int
    last_replayed_at: datetime | None
    payload: str | None = None
    payload_hash: str | None = None
    """SHA-256 of the payload (None for rows recorded before revision 0004)."""
    conflict_of: str | None = None
    """For a ``conflict`` row: the svix id whose first body won."""

    @property
    def received_at_ms(self) -> int:
        return unix_milliseconds(self.received_at)

    @classmethod
    def from_row(cls, row: Row[Any]) -> StoredEvent:
        values = row._mapping
        received_at = as_utc(values["received_at"])
        assert received_at is not None
        return cls(
            svix_id=values["svix_id"],
            event_type=values["event_type"],
            status=values["status"],
            attempts=values["attempts"],
            last_error=values["last_error"],
            event_timestamp=values["event_timestamp"],
            received_at=received_at,
            processed_at=as_utc(values["processed_at"]),
            organization_id=values["organization_id"],
            replay_count=values["replay_count"],
            last_replayed_at=as_utc(values["last_replayed_at"]),
            payload=values.get("payload"),
            payload_hash=values.get("payload_hash"),
            conflict_of=values.get("conflict_of"),
        )


SUMMARY_COLUMNS: Final = tuple(
    column for column in webhook_events.columns if column.name != "payload"
)
ORDER: Final = (webhook_events.c.received_at, webhook_events.c.svix_id)


def list_events(
    connection: Connection,
    event_filter: EventFilter,
    *,
    limit: int | None,
    newest_first: bool = True,
) -> list[StoredEvent]:
    """Matching events without their payloads, newest (by receipt) first unless asked."""
    statement = select(*SUMMARY_COLUMNS).where(*event_filter.conditions())
    statement = statement.order_by(*(column.desc() for column in ORDER) if newest_first else ORDER)
    if limit is not None:
        statement = statement.limit(limit)
    return [StoredEvent.from_row(row) for row in connection.execute(statement)]


def get_event(connection: Connection, svix_id: str) -> StoredEvent | None:
    row = connection.execute(select(webhook_events).where(event_with_id(svix_id))).one_or_none()
    return None if row is None else StoredEvent.from_row(row)


def matching_ids(connection: Connection, event_filter: EventFilter) -> list[str]:
    """The ids of every matching event, oldest first: a replay's fixed work list."""
    return list(
        connection.execute(
            select(webhook_events.c.svix_id).where(*event_filter.conditions()).order_by(*ORDER)
        ).scalars()
    )


def lock_for_replay(
    connection: Connection, svix_ids: Sequence[str], event_filter: EventFilter
) -> list[StoredEvent]:
    """Lock the events of one replay batch that still match the filter (with their payloads).

    Held until the transaction ends, the row locks make a worker that receives a replayed copy
    wait in ``claim_event`` until ``mark_replayed`` is committed, so it never sees the old
    ``applied`` status and drops the copy as a duplicate.
    """
    if not svix_ids:
        return []
    rows = connection.execute(
        select(webhook_events)
        .where(webhook_events.c.svix_id.in_(svix_ids), *event_filter.conditions())
        .order_by(*ORDER)
        .with_for_update()
    )
    return [StoredEvent.from_row(row) for row in rows]


def mark_replayed(connection: Connection, svix_id: str, at: datetime) -> None:
    """Record one replay and make the event applicable again: a ``received`` event is not
    finished, so the worker applies the replayed copy instead of dropping it as a duplicate.
    ``last_error`` stays until the worker records the new outcome."""
    connection.execute(
        update(webhook_events)
        .where(event_with_id(svix_id))
        .values(
            status=RECEIVED,
            processed_at=None,
            replay_count=webhook_events.c.replay_count + 1,
            last_replayed_at=as_utc(at),
        )
    )


def _purge_condition(cutoff: datetime, statuses: Sequence[str]) -> ColumnElement[bool]:
    """Received before ``cutoff`` and not replayed since; never an event in flight."""
    events = webhook_events.c
    cutoff = as_utc(cutoff) or cutoff
    return and_(
        events.status.in_([status for status in statuses if status != RECEIVED]),
        events.received_at < cutoff,
        or_(events.last_replayed_at.is_(None), events.last_replayed_at < cutoff),
    )


def count_purgeable(connection: Connection, cutoff: datetime, statuses: Sequence[str]) -> int:
    return int(
        connection.execute(
            select(func.count())
            .select_from(webhook_events)
            .where(_purge_condition(cutoff, statuses))
        ).scalar_one()
    )


def purge_events(
    engine: Engine,
    cutoff: datetime,
    statuses: Sequence[str] = PURGEABLE,
    *,
    batch_size: int = PURGE_BATCH,
) -> int:
    """Delete matching events, with their ids; returns how many. On PostgreSQL each month wholly
    before ``cutoff`` that holds nothing else is dropped first, a transaction each
    (``models.partitions``); the rest go in batches, one short transaction each."""
    purged = 0
    condition = _purge_condition(cutoff, statuses)
    with transaction(engine) as connection:
        months = (
            droppable(connection, as_utc(cutoff) or cutoff, not_(condition))
            if is_partitioned(connection)
            else []
        )
    for month in months:
        # Checked in another transaction: an event of the month replayed meanwhile goes with it,
        # and its replayed message, finding no id, is applied and recorded as a new event.
        try:
            with transaction(engine) as connection:
                purged += drop_partition(connection, month)
        except OperationalError as error:
            if getattr(error.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
                raise
            log.warning("month not dropped: the inbox was busy", extra={"month": month.name})
    events = webhook_events.c
    while True:
        with transaction(engine) as connection:
            batch = select(events.svix_id, events.received_at).where(condition).limit(batch_size)
            deleted = list(
                connection.execute(
                    delete(webhook_events)
                    .where(tuple_(events.svix_id, events.received_at).in_(batch))
                    .returning(events.svix_id)
                ).scalars()
            )
            if deleted:
                connection.execute(
                    delete(webhook_event_ids).where(webhook_event_ids.c.svix_id.in_(deleted))
                )
        purged += len(deleted)
        if len(deleted) < batch_size:
            return purged


@dataclass(frozen=True)
class InboxSummary:
    dead: int
    received: int
    oldest_received: StoredEvent | None
    """The oldest event not yet finished (``received``: queued, or waiting for a retry)."""
    last_applied: StoredEvent | None
    """The event applied most recently (by ``processed_at``)."""


def summarise(connection: Connection) -> InboxSummary:
    """What ``status`` shows; every query is an index range scan."""
    events = webhook_events.c

    def count(status: str) -> int:
        return int(
            connection.execute(
                select(func.count()).select_from(webhook_events).where(events.status == status)
            ).scalar_one()
        )

    def first(status: str, *order: Any) -> StoredEvent | None:
        row = connection.execute(
            select(*SUMMARY_COLUMNS).where(events.status == status).order_by(*order).limit(1)
        ).one_or_none()
        return None if row is None else StoredEvent.from_row(row)

    return InboxSummary(
        dead=count(DEAD),
        received=count(RECEIVED),
        oldest_received=first(RECEIVED, events.received_at, events.svix_id),
        last_applied=first(APPLIED, events.processed_at.desc(), events.svix_id.desc()),
    )


def count_events(connection: Connection, event_filter: EventFilter) -> int:
    return int(
        connection.execute(
            select(func.count()).select_from(webhook_events).where(*event_filter.conditions())
        ).scalar_one()
    )


def applied_events_after(
    connection: Connection, after: tuple[datetime, str] | None, limit: int
) -> list[StoredEvent]:
    """One page of applied events (with payloads) in receipt order, after the keyset ``after``:
    the log ``rebuild`` re-applies."""
    statement = select(webhook_events).where(webhook_events.c.status == APPLIED)
    if after is not None:
        statement = statement.where(tuple_(*ORDER) > tuple_(as_utc(after[0]), after[1]))
    rows = connection.execute(statement.order_by(*ORDER).limit(limit))
    return [StoredEvent.from_row(row) for row in rows]


REBUILT_TOMBSTONES: Final = (ORGANIZATION, ORGANIZATION_MEMBERSHIP)
"""The tombstones ``rebuild`` empties and restores; others (of other entity types) are kept."""


def empty_synced_tables(connection: Connection) -> None:
    """Delete every organization, membership and their tombstones (``rebuild``'s first step)."""
    connection.execute(delete(organization_memberships))
    connection.execute(delete(organizations))
    connection.execute(delete(tombstones).where(tombstones.c.entity_type.in_(REBUILT_TOMBSTONES)))


def synced_table_sizes(connection: Connection) -> dict[str, int]:
    """Rows in the tables ``rebuild`` empties (tombstones: only the kinds it rebuilds)."""

    def count(table: Table, *where: ColumnElement[bool]) -> int:
        statement = select(func.count()).select_from(table).where(*where)
        return int(connection.execute(statement).scalar_one())

    return {
        "organizations": count(organizations),
        "organization_memberships": count(organization_memberships),
        "tombstones": count(tombstones, tombstones.c.entity_type.in_(REBUILT_TOMBSTONES)),
    }
