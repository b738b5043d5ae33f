"""The tables other applications read. Column meanings are documented in docs/tables.md."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

JSONDocument: Any = JSON().with_variant(JSONB(), "postgresql")
Timestamp = DateTime(timezone=True)

organizations = Table(
    "organizations",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", Text, nullable=False),
    Column("slug", Text, index=True),
    Column("image_url", Text),
    Column("workspace_id", Text, index=True),
    Column("public_metadata", JSONDocument, nullable=False),
    Column("created_by", String(64)),
    Column("max_allowed_memberships", Integer),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("synced_at", Timestamp, nullable=False),
    Column("synced_by", String(128)),
)

organization_memberships = Table(
    "organization_memberships",
    metadata,
    Column("id", String(64), primary_key=True),
    Column(
        "organization_id",
        String(64),
        ForeignKey("organizations.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("user_id", String(64), nullable=False, index=True),
    Column("role", Text, nullable=False),
    Column("permissions", JSONDocument, nullable=False),
    Column("listed_permissions", JSONDocument),
    Column("identifier", Text),
    Column("listed_identifier", Text),
    Column("first_name", Text),
    Column("last_name", Text),
    Column("image_url", Text),
    Column("public_metadata", JSONDocument, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("synced_at", Timestamp, nullable=False),
    Column("synced_by", String(128)),
    UniqueConstraint("organization_id", "user_id"),
)

users = Table(
    "users",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("primary_email_address", Text, index=True),
    Column("username", Text),
    Column("first_name", Text),
    Column("last_name", Text),
    Column("image_url", Text),
    Column("external_id", Text, index=True),
    Column("public_metadata", JSONDocument, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("synced_at", Timestamp, nullable=False),
    Column("synced_by", String(128)),
)

organization_roles = Table(
    "organization_roles",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("key", Text, nullable=False, index=True),
    Column("name", Text, nullable=False),
    Column("description", Text),
    Column("permission_ids", JSONDocument, nullable=False),
    Column("is_creator_eligible", Boolean),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("synced_at", Timestamp, nullable=False),
    Column("synced_by", String(128)),
)

organization_permissions = Table(
    "organization_permissions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("key", Text, nullable=False, index=True),
    Column("name", Text, nullable=False),
    Column("description", Text),
    Column("type", Text),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("synced_at", Timestamp, nullable=False),
    Column("synced_by", String(128)),
)

organization_invitations = Table(
    "organization_invitations",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("organization_id", String(64), nullable=False, index=True),
    Column("email_address", Text, index=True),
    Column("role", Text, nullable=False),
    Column("role_name", Text),
    Column("status", Text, nullable=False),
    Column("public_metadata", JSONDocument, nullable=False),
    Column("url", Text),
    Column("inviter_id", String(64)),
    Column("user_id", String(64), index=True),
    Column("expires_at", BigInteger),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("synced_at", Timestamp, nullable=False),
    Column("synced_by", String(128)),
)

organization_domains = Table(
    "organization_domains",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("organization_id", String(64), nullable=False, index=True),
    Column("name", Text, nullable=False, index=True),
    Column("enrollment_mode", Text),
    Column("verification_status", Text),
    Column("ownership_verification_status", Text),
    Column("affiliation_email_address", Text),
    Column("total_pending_invitations", Integer),
    Column("total_pending_suggestions", Integer),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Column("synced_at", Timestamp, nullable=False),
    Column("synced_by", String(128)),
)

tombstones = Table(
    "tombstones",
    metadata,
    Column("entity_type", String(32), primary_key=True),
    Column("entity_id", String(64), primary_key=True),
    Column("organization_id", String(64)),
    Column("created_at", BigInteger),
    Column("deleted_at", BigInteger, nullable=False),
    Column("reason", String(16), nullable=False),
    Column("synced_at", Timestamp, nullable=False),
)

erasure_requests = Table(
    "erasure_requests",
    metadata,
    Column("user_id", String(64), primary_key=True),
    Column("requested_at", Timestamp, nullable=False),
)

sync_changes = Table(
    "sync_changes",
    metadata,
    Column("id", BigInteger().with_variant(Integer(), "sqlite"), primary_key=True),
    Column("table_name", String(64), nullable=False),
    Column("entity_id", String(64), nullable=False),
    Column("operation", String(8), nullable=False),
    Column("changed_columns", JSONDocument, nullable=False),
    Column("row_values", JSONDocument),
    Column("source", String(128)),
    Column("changed_at", Timestamp, nullable=False, server_default=text("CURRENT_TIMESTAMP")),
    Index("ix_sync_changes_changed_at", "changed_at"),
    sqlite_autoincrement=True,
)
"""The change feed (docs/changes.md): written by triggers (``models.changes.triggers``) in the
transaction of each change to a synced table."""

sync_change_positions = Table(
    "sync_change_positions",
    metadata,
    Column("consumer", String(128), primary_key=True),
    Column("last_id", BigInteger, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
)

webhook_events = Table(
    "webhook_events",
    metadata,
    Column("svix_id", String(128), primary_key=True),
    Column("event_type", String(128)),
    Column("status", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text),
    Column("payload", Text, nullable=False),
    Column("event_timestamp", BigInteger),
    Column("received_at", Timestamp, nullable=False),
    Column("processed_at", Timestamp),
    Column("organization_id", String(64), index=True),
    Column("replay_count", Integer, nullable=False, default=0, server_default="0"),
    Column("last_replayed_at", Timestamp),
    Column("payload_hash", String(64)),
    Column("conflict_of", String(128)),
    Column("user_id", String(64), index=True),
    Index("ix_webhook_events_status_received_at", "status", "received_at"),
    Index("ix_webhook_events_status_processed_at", "status", "processed_at"),
    Index("ix_webhook_events_received_at", "received_at"),
    Index("ix_webhook_events_event_type", "event_type"),
    Index("ix_webhook_events_event_timestamp", "event_timestamp"),
)
"""The inbox: one row per event (``svix_id`` unique through ``webhook_event_ids``). On PostgreSQL
partitioned by month of ``received_at`` (migration 0009, ``models.partitions``): its key there is
``(svix_id, received_at)``, as a partitioned table's key must hold the partition key; SQLite keeps
one table keyed by ``svix_id``."""

webhook_event_ids = Table(
    "webhook_event_ids",
    metadata,
    Column("svix_id", String(128), primary_key=True),
    Column("received_at", Timestamp, nullable=False),
    Index("ix_webhook_event_ids_received_at", "received_at"),
)
"""Each svix id of ``webhook_events`` once, with its row's ``received_at``: claiming an id here
first is what dedupes events (the partitioned table cannot have a unique ``svix_id``), and its
``received_at`` takes a lookup by svix id to one partition."""
