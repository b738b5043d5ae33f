"""Operator tooling on the inbox: the organization an event concerns, replay bookkeeping, and the
indexes behind ``clerk-sync events`` filters, ``purge`` and ``status``.

``organization_id`` is backfilled from the stored payloads with a Python loop (the same on
PostgreSQL and SQLite), in batches.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BACKFILL_BATCH = 1000
MAX_ORGANIZATION_ID_LENGTH = 64

INDEXES = {
    "ix_webhook_events_organization_id": ["organization_id"],
    "ix_webhook_events_status_processed_at": ["status", "processed_at"],
    "ix_webhook_events_received_at": ["received_at"],
    "ix_webhook_events_event_type": ["event_type"],
    "ix_webhook_events_event_timestamp": ["event_timestamp"],
}


def upgrade() -> None:
    op.add_column("webhook_events", sa.Column("organization_id", sa.String(64), nullable=True))
    op.add_column(
        "webhook_events",
        sa.Column("replay_count", sa.Integer(), nullable=False, server_default="0"),
    )
    op.add_column(
        "webhook_events",
        sa.Column("last_replayed_at", sa.DateTime(timezone=True), nullable=True),
    )
    backfill_organization_ids()
    for name, columns in INDEXES.items():
        op.create_index(name, "webhook_events", columns)


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name="webhook_events")
    with op.batch_alter_table("webhook_events") as batch:
        batch.drop_column("last_replayed_at")
        batch.drop_column("replay_count")
        batch.drop_column("organization_id")


def backfill_organization_ids() -> None:
    """Fill ``organization_id`` for the events already stored, a batch at a time (keyset on the
    primary key, so each batch is an index range scan)."""
    connection = op.get_bind()
    events = sa.table(
        "webhook_events",
        sa.column("svix_id", sa.String),
        sa.column("event_type", sa.String),
        sa.column("payload", sa.Text),
        sa.column("organization_id", sa.String),
    )
    after = ""
    while True:
        batch = connection.execute(
            sa.select(events.c.svix_id, events.c.event_type, events.c.payload)
            .where(events.c.svix_id > after, events.c.event_type.is_not(None))
            .order_by(events.c.svix_id)
            .limit(BACKFILL_BATCH)
        ).all()
        if not batch:
            return
        updates = [
            {"key": svix_id, "organization_id": organization_id}
            for svix_id, event_type, payload in batch
            if (organization_id := organization_of(event_type, payload)) is not None
        ]
        if updates:
            connection.execute(
                events.update()
                .where(events.c.svix_id == sa.bindparam("key"))
                .values(organization_id=sa.bindparam("organization_id")),
                updates,
            )
        after = batch[-1][0]


def organization_of(event_type: str, payload: str) -> str | None:
    """A frozen copy of ``workers.processing.organization_of`` as of this revision."""
    try:
        document: Any = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, dict):
        return None
    if event_type.startswith("organization."):
        candidate = data.get("id")
    elif event_type.startswith("organizationMembership."):
        organization = data.get("organization")
        candidate = organization.get("id") if isinstance(organization, dict) else None
    else:
        candidate = data.get("organization_id")
    if (
        isinstance(candidate, str)
        and 0 < len(candidate) <= MAX_ORGANIZATION_ID_LENGTH
        and "\x00" not in candidate
    ):
        return candidate
    return None
