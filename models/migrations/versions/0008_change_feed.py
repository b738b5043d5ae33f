"""The change feed: ``sync_changes``, written by triggers on every synced table in the transaction
of each change (``models.changes``), ``sync_change_positions`` (consumers' positions, the
Celery fan-out's among them), a ``synced_by`` column on each synced table (the svix id, or
``reconcile``/``rebuild``, of the write that left the row as it is).

Additive: two new tables, one nullable column per synced table, triggers. The triggers are
built from the columns the database holds at this revision (``models.changes.triggers``); a
later migration changing a synced table's columns re-creates that table's SQLite triggers.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from models.changes.triggers import (
    postgresql_drop_triggers,
    postgresql_function,
    postgresql_triggers,
    sqlite_drop_triggers,
    sqlite_triggers,
)

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
FEED_TABLES = (
    "organizations",
    "organization_memberships",
    "users",
    "organization_roles",
    "organization_permissions",
    "organization_invitations",
    "organization_domains",
)


def upgrade() -> None:
    op.create_table(
        "sync_changes",
        # PostgreSQL: bigserial (sequence sync_changes_id_seq); SQLite: AUTOINCREMENT, so an
        # id is never handed out twice, even after the newest changes are purged.
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("table_name", sa.String(64), nullable=False),
        sa.Column("entity_id", sa.String(64), nullable=False),
        sa.Column("operation", sa.String(8), nullable=False),
        sa.Column("changed_columns", JSON_DOCUMENT, nullable=False),
        sa.Column("row_values", JSON_DOCUMENT, nullable=True),
        sa.Column("source", sa.String(128), nullable=True),
        sa.Column(
            "changed_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name="pk_sync_changes"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_sync_changes_changed_at", "sync_changes", ["changed_at"])
    op.create_table(
        "sync_change_positions",
        sa.Column("consumer", sa.String(128), nullable=False),
        sa.Column("last_id", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("consumer", name="pk_sync_change_positions"),
    )
    for table in FEED_TABLES:
        op.add_column(table, sa.Column("synced_by", sa.String(128), nullable=True))

    connection = op.get_bind()
    inspector = sa.inspect(connection)
    for table in FEED_TABLES:
        columns = inspector.get_columns(table)
        names = [column["name"] for column in columns]
        if connection.dialect.name == "postgresql":
            op.execute(postgresql_function(table, names))
            for statement in postgresql_triggers(table):
                op.execute(statement)
            continue
        documents = [c["name"] for c in columns if isinstance(c["type"], sa.JSON)]
        for statement in sqlite_triggers(table, names, documents):
            op.execute(statement)


def downgrade() -> None:
    postgres = op.get_bind().dialect.name == "postgresql"
    for table in FEED_TABLES:
        for statement in (
            postgresql_drop_triggers(table) if postgres else sqlite_drop_triggers(table)
        ):
            op.execute(statement)
        with op.batch_alter_table(table) as batch:
            batch.drop_column("synced_by")
    op.drop_table("sync_change_positions")
    op.drop_index("ix_sync_changes_changed_at", table_name="sync_changes")
    op.drop_table("sync_changes")
