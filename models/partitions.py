"""``webhook_events`` by month on PostgreSQL (migration 0009): the monthly partitions, created
ahead of time, and retention as dropping a month that holds only what would be purged.

Partitions this module manages are named ``webhook_events_yYYYYmMM`` and hold the month
``[first day, first day of the next month)`` of ``received_at`` (UTC); ``webhook_events_default``
takes any row outside them, so an insert never fails for want of a partition. SQLite keeps one
table: every function here does nothing there.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from sqlalchemy import ColumnElement, Connection, func, select, text

from models.tables import webhook_events

PARENT: Final = "webhook_events"
DEFAULT_PARTITION: Final = "webhook_events_default"
NAME: Final = re.compile(r"^webhook_events_y(\d{4})m(\d{2})$")
MONTHS_AHEAD: Final = 3
"""Partitions kept ahead of the current month (``ensure_partitions``)."""
LOCK_KEY: Final = 0x636C6B_70617274
"""Advisory lock taken while partitions are created or dropped: two beats or commands at once
take turns instead of racing on ``CREATE TABLE``."""


@dataclass(frozen=True, order=True)
class Partition:
    start: datetime
    end: datetime
    name: str


def month_start(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def next_month(start: datetime) -> datetime:
    return datetime(start.year + start.month // 12, start.month % 12 + 1, 1, tzinfo=UTC)


def partition_for(start: datetime) -> Partition:
    start = month_start(start)
    return Partition(start, next_month(start), f"{PARENT}_y{start.year:04d}m{start.month:02d}")


def is_partition_name(name: str | None) -> bool:
    """Whether ``name`` is one of the inbox's partitions (not in ``models.tables.metadata``)."""
    return name == DEFAULT_PARTITION or bool(name and NAME.match(name))


def is_partitioned(connection: Connection) -> bool:
    """Whether this database's ``webhook_events`` is partitioned (PostgreSQL after 0009)."""
    if connection.dialect.name != "postgresql":
        return False
    return bool(
        connection.execute(
            text(
                "SELECT EXISTS (SELECT 1 FROM pg_partitioned_table p "
                "JOIN pg_class c ON c.oid = p.partrelid "
                "WHERE c.oid = to_regclass(:parent))"
            ),
            {"parent": PARENT},
        ).scalar_one()
    )


def partitions(connection: Connection) -> list[Partition]:
    """The monthly partitions (by name), oldest first; others (the default) are not listed."""
    names = connection.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass(:parent)"
        ),
        {"parent": PARENT},
    ).scalars()
    found = []
    for name in names:
        match = NAME.match(str(name))
        if match:
            found.append(partition_for(datetime(int(match[1]), int(match[2]), 1, tzinfo=UTC)))
    return sorted(found)


def _bound(moment: datetime) -> str:
    return f"'{moment.strftime('%Y-%m-%d %H:%M:%S')}+00'"


def _range(partition: Partition) -> str:
    return f"FROM ({_bound(partition.start)}) TO ({_bound(partition.end)})"


def create_partition(connection: Connection, partition: Partition) -> bool:
    """Create one month's partition unless it exists; returns whether it was created. Rows the
    default partition holds for that month move into it (the same transaction)."""
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
    if partition in partitions(connection):
        return False
    # Names and bounds are built here from dates, never from input.
    in_range = f"received_at >= {_bound(partition.start)} AND received_at < {_bound(partition.end)}"
    create = f"CREATE TABLE {partition.name} PARTITION OF {PARENT} FOR VALUES {_range(partition)}"
    stray = connection.execute(
        text(f"SELECT EXISTS (SELECT 1 FROM {DEFAULT_PARTITION} WHERE {in_range})")  # noqa: S608
    ).scalar_one()
    if not stray:
        connection.execute(text(create))
        return True
    connection.execute(text(f"ALTER TABLE {PARENT} DETACH PARTITION {DEFAULT_PARTITION}"))
    connection.execute(text(create))
    connection.execute(
        text(f"INSERT INTO {PARENT} SELECT * FROM {DEFAULT_PARTITION} WHERE {in_range}")  # noqa: S608
    )
    connection.execute(text(f"DELETE FROM {DEFAULT_PARTITION} WHERE {in_range}"))  # noqa: S608
    connection.execute(text(f"ALTER TABLE {PARENT} ATTACH PARTITION {DEFAULT_PARTITION} DEFAULT"))
    return True


def ensure_partitions(
    connection: Connection, now: datetime, months_ahead: int = MONTHS_AHEAD
) -> list[str]:
    """Create the partitions of the current month and the ``months_ahead`` after it that are
    missing; returns the names created (none when run again: idempotent)."""
    if not is_partitioned(connection):
        return []
    created = []
    start = month_start(now)
    for _ in range(months_ahead + 1):
        partition = partition_for(start)
        if create_partition(connection, partition):
            created.append(partition.name)
        start = partition.end
    return created


def months_ahead(connection: Connection, now: datetime) -> int:
    """How many whole months after the current one have a partition (-1: not even the current
    one; SQLite: none needed, reported as ``MONTHS_AHEAD``)."""
    if not is_partitioned(connection):
        return MONTHS_AHEAD
    existing = set(partitions(connection))
    start, ahead = month_start(now), -1
    while partition_for(start) in existing:
        ahead += 1
        start = next_month(start)
    return ahead


def droppable(
    connection: Connection, cutoff: datetime, keep: ColumnElement[bool]
) -> list[Partition]:
    """The monthly partitions wholly before ``cutoff`` holding no row that ``keep`` matches."""
    found = []
    for partition in partitions(connection):
        if partition.end > cutoff:
            break
        kept = connection.execute(
            select(func.count())
            .select_from(webhook_events)
            .where(
                webhook_events.c.received_at >= partition.start,
                webhook_events.c.received_at < partition.end,
                keep,
            )
        ).scalar_one()
        if not kept:
            found.append(partition)
    return found


DROP_LOCK_TIMEOUT: Final = "5s"
"""How long a month's drop waits for the inbox's lock (``drop_partition``)."""


def drop_partition(connection: Connection, partition: Partition) -> int:
    """Drop one month, with its ids in ``webhook_event_ids``; returns how many events it held.

    Dropping a partition takes the inbox itself exclusively, for a moment: taken first (the
    order workers take the inbox, then its partitions), it waits at most ``DROP_LOCK_TIMEOUT``
    for running transactions, so workers never queue long behind it; on a timeout the caller's
    transaction fails (``lock_not_available``) and the month is left for another time."""
    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": LOCK_KEY})
    if partition not in partitions(connection):
        return 0
    connection.execute(text(f"SET LOCAL lock_timeout = '{DROP_LOCK_TIMEOUT}'"))
    connection.execute(text(f"LOCK TABLE {PARENT} IN ACCESS EXCLUSIVE MODE"))
    held = int(
        connection.execute(text(f"SELECT count(*) FROM {partition.name}")).scalar_one()  # noqa: S608
    )
    connection.execute(
        text("DELETE FROM webhook_event_ids WHERE received_at >= :start AND received_at < :end"),
        {"start": partition.start, "end": partition.end},
    )
    connection.execute(text(f"DROP TABLE {partition.name}"))
    return held


def partition_names(found: Sequence[Partition]) -> list[str]:
    return [partition.name for partition in found]
