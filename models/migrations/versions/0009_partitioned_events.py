"""The inbox by month: ``webhook_events`` partitioned by month of ``received_at`` on PostgreSQL,
and ``webhook_event_ids`` (each svix id once, with its row's ``received_at``), which dedupes
events now that ``svix_id`` cannot be unique across partitions (``models.event_ids``).

PostgreSQL: the id table is filled from the inbox; a partitioned copy of the inbox is created
(columns, defaults and order as they are) with a partition for every month holding events,
the current month and ``MONTHS_AHEAD`` more, and a default partition; every row is copied,
the counts compared (the migration fails, changing nothing, if they differ), the old table
dropped and the copy renamed into its place, with its key ``(svix_id, received_at)`` and the
old table's indexes re-created as partitioned indexes. One transaction: all of it or nothing.
Stop the workers for it (the copy holds the inbox locked against writes meanwhile).

SQLite: only the id table, filled from the inbox (one table stays: nothing to partition).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

from models.partitions import (
    DEFAULT_PARTITION,
    MONTHS_AHEAD,
    Partition,
    month_start,
    next_month,
    partition_for,
)

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

PRIMARY_KEY = "pk_webhook_events"


def upgrade() -> None:
    op.create_table(
        "webhook_event_ids",
        sa.Column("svix_id", sa.String(128), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("svix_id", name="pk_webhook_event_ids"),
    )
    op.execute(
        "INSERT INTO webhook_event_ids (svix_id, received_at) "
        "SELECT svix_id, received_at FROM webhook_events"
    )
    op.create_index("ix_webhook_event_ids_received_at", "webhook_event_ids", ["received_at"])
    if op.get_bind().dialect.name == "postgresql":
        _partition()


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _unpartition()
    op.drop_index("ix_webhook_event_ids_received_at", table_name="webhook_event_ids")
    op.drop_table("webhook_event_ids")


def _indexes(connection: sa.Connection) -> list[str]:
    """The inbox's index definitions but its key's (``CREATE INDEX name ON … (…)``)."""
    return [
        str(definition).replace(" ON ONLY ", " ON ")
        for definition in connection.execute(
            sa.text(
                "SELECT indexdef FROM pg_indexes WHERE schemaname = current_schema() "
                "AND tablename = 'webhook_events' AND indexname <> :key ORDER BY indexname"
            ),
            {"key": PRIMARY_KEY},
        ).scalars()
    ]


def _months(connection: sa.Connection) -> list[Partition]:
    """A partition for every month holding events, the current month and the next few."""
    held = connection.execute(
        sa.text(
            "SELECT DISTINCT date_trunc('month', received_at AT TIME ZONE 'UTC') "
            "FROM webhook_events"
        )
    ).scalars()
    starts = {month_start(moment.replace(tzinfo=UTC)) for moment in held}
    start = month_start(datetime.now(UTC))
    for _ in range(MONTHS_AHEAD + 1):
        starts.add(start)
        start = next_month(start)
    return [partition_for(start) for start in sorted(starts)]


def _bound(moment: datetime) -> str:
    return f"'{moment.strftime('%Y-%m-%d %H:%M:%S')}+00'"


def _copy(connection: sa.Connection, source: str, target: str) -> None:
    """Copy every row, then compare the counts: a difference fails the migration."""
    connection.execute(sa.text(f"INSERT INTO {target} SELECT * FROM {source}"))  # noqa: S608
    copied = connection.execute(sa.text(f"SELECT count(*) FROM {target}")).scalar_one()  # noqa: S608
    held = connection.execute(sa.text(f"SELECT count(*) FROM {source}")).scalar_one()  # noqa: S608
    if copied != held:
        raise RuntimeError(f"copied {copied} of {held} webhook_events rows: nothing changed")


def _partition() -> None:
    connection = op.get_bind()
    connection.execute(sa.text("LOCK TABLE webhook_events IN SHARE MODE"))
    indexes = _indexes(connection)
    connection.execute(
        sa.text(
            "CREATE TABLE webhook_events_partitioned (LIKE webhook_events INCLUDING DEFAULTS) "
            "PARTITION BY RANGE (received_at)"
        )
    )
    for partition in _months(connection):
        connection.execute(
            sa.text(
                f"CREATE TABLE {partition.name} PARTITION OF webhook_events_partitioned "
                f"FOR VALUES FROM ({_bound(partition.start)}) TO ({_bound(partition.end)})"
            )
        )
    connection.execute(
        sa.text(f"CREATE TABLE {DEFAULT_PARTITION} PARTITION OF webhook_events_partitioned DEFAULT")
    )
    _copy(connection, "webhook_events", "webhook_events_partitioned")
    connection.execute(sa.text("DROP TABLE webhook_events"))
    connection.execute(sa.text("ALTER TABLE webhook_events_partitioned RENAME TO webhook_events"))
    connection.execute(
        sa.text(
            f"ALTER TABLE webhook_events ADD CONSTRAINT {PRIMARY_KEY} "
            "PRIMARY KEY (svix_id, received_at)"
        )
    )
    for definition in indexes:
        connection.execute(sa.text(definition))


def _unpartition() -> None:
    connection = op.get_bind()
    connection.execute(sa.text("LOCK TABLE webhook_events IN SHARE MODE"))
    indexes = _indexes(connection)
    connection.execute(
        sa.text("CREATE TABLE webhook_events_flat (LIKE webhook_events INCLUDING DEFAULTS)")
    )
    _copy(connection, "webhook_events", "webhook_events_flat")
    connection.execute(sa.text("DROP TABLE webhook_events"))  # and its partitions
    connection.execute(sa.text("ALTER TABLE webhook_events_flat RENAME TO webhook_events"))
    connection.execute(
        sa.text(f"ALTER TABLE webhook_events ADD CONSTRAINT {PRIMARY_KEY} PRIMARY KEY (svix_id)")
    )
    for definition in indexes:
        connection.execute(sa.text(definition))
