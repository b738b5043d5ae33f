"""Payload hashes: ``webhook_events.payload_hash`` tells two bodies sent under one svix id apart,
and ``conflict_of`` marks the row that records the second one (status ``conflict``).

Additive only: two nullable columns. Rows recorded before this revision keep a NULL hash (it is
not backfilled: a hash is only compared when both sides have one).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # ADD COLUMN of a nullable column: no table rewrite on PostgreSQL nor SQLite.
    op.add_column("webhook_events", sa.Column("payload_hash", sa.String(64), nullable=True))
    op.add_column("webhook_events", sa.Column("conflict_of", sa.String(128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("webhook_events") as table:
        table.drop_column("conflict_of")
        table.drop_column("payload_hash")
