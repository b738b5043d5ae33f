"""The user an event is about: ``webhook_events.user_id`` (``data.id`` of ``user.*``,
``data.public_user_data.user_id`` of ``organizationMembership.*``), indexed, so the stored
payloads of a deleted user's events can be found and erased without reading every payload.

Additive: one nullable column and its index; backfilled from the stored payloads with a Python
loop (the same on PostgreSQL and SQLite), in batches.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

BACKFILL_BATCH = 1000
MAX_USER_ID_LENGTH = 64


def upgrade() -> None:
    op.add_column("webhook_events", sa.Column("user_id", sa.String(64), nullable=True))
    backfill_user_ids()
    op.create_index("ix_webhook_events_user_id", "webhook_events", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_webhook_events_user_id", table_name="webhook_events")
    with op.batch_alter_table("webhook_events") as batch:
        batch.drop_column("user_id")


def backfill_user_ids() -> None:
    """Fill ``user_id`` for the user and membership events already stored, a batch at a time
    (keyset on the primary key)."""
    connection = op.get_bind()
    events = sa.table(
        "webhook_events",
        sa.column("svix_id", sa.String),
        sa.column("event_type", sa.String),
        sa.column("payload", sa.Text),
        sa.column("user_id", sa.String),
    )
    about_users = sa.or_(
        events.c.event_type.like("user.%"), events.c.event_type.like("organizationMembership.%")
    )
    after = ""
    while True:
        batch = connection.execute(
            sa.select(events.c.svix_id, events.c.event_type, events.c.payload)
            .where(events.c.svix_id > after, about_users)
            .order_by(events.c.svix_id)
            .limit(BACKFILL_BATCH)
        ).all()
        if not batch:
            return
        updates = [
            {"key": svix_id, "user_id": user_id}
            for svix_id, event_type, payload in batch
            if (user_id := user_of(event_type, payload)) is not None
        ]
        if updates:
            connection.execute(
                events.update()
                .where(events.c.svix_id == sa.bindparam("key"))
                .values(user_id=sa.bindparam("user_id")),
                updates,
            )
        after = batch[-1][0]


def user_of(event_type: str, payload: str) -> str | None:
    """A frozen copy of ``workers.processing.user_of`` as of this revision."""
    try:
        document: Any = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, dict):
        return None
    candidate: Any = None
    if event_type.startswith("user."):
        candidate = data.get("id")
    elif event_type.startswith("organizationMembership."):
        member = data.get("public_user_data")
        candidate = member.get("user_id") if isinstance(member, dict) else None
    if isinstance(candidate, str) and 0 < len(candidate) <= MAX_USER_ID_LENGTH:
        return candidate if "\x00" not in candidate else None
    return None
