"""The rest of Clerk's organization model: ``organization_roles``, ``organization_permissions``,
``organization_invitations`` and ``organization_domains`` (kept from ``role.*``,
``permission.*``, ``organizationInvitation.*`` and ``organizationDomain.*``), and what a
membership's own newest event listed (``listed_permissions``, ``listed_identifier``), from which
its derived ``permissions`` and ``identifier`` fall back when no role or user row says otherwise.

Additive: four new tables, two nullable columns, backfilled from the columns they back.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

JSON_DOCUMENT = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _versions() -> list[sa.Column[int]]:
    return [
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "organization_roles",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("permission_ids", JSON_DOCUMENT, nullable=False),
        sa.Column("is_creator_eligible", sa.Boolean(), nullable=True),
        *_versions(),
        sa.Column("synced_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_organization_roles"),
    )
    op.create_index("ix_organization_roles_key", "organization_roles", ["key"])
    op.create_table(
        "organization_permissions",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("type", sa.Text(), nullable=True),
        *_versions(),
        sa.Column("synced_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_organization_permissions"),
    )
    op.create_index("ix_organization_permissions_key", "organization_permissions", ["key"])
    op.create_table(
        "organization_invitations",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("organization_id", sa.String(64), nullable=False),
        sa.Column("email_address", sa.Text(), nullable=True),
        sa.Column("role", sa.Text(), nullable=False),
        sa.Column("role_name", sa.Text(), nullable=True),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("public_metadata", JSON_DOCUMENT, nullable=False),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("inviter_id", sa.String(64), nullable=True),
        sa.Column("user_id", sa.String(64), nullable=True),
        sa.Column("expires_at", sa.BigInteger(), nullable=True),
        *_versions(),
        sa.Column("synced_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_organization_invitations"),
    )
    for column in ("organization_id", "email_address", "user_id"):
        op.create_index(
            f"ix_organization_invitations_{column}", "organization_invitations", [column]
        )
    op.create_table(
        "organization_domains",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("organization_id", sa.String(64), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("enrollment_mode", sa.Text(), nullable=True),
        sa.Column("verification_status", sa.Text(), nullable=True),
        sa.Column("ownership_verification_status", sa.Text(), nullable=True),
        sa.Column("affiliation_email_address", sa.Text(), nullable=True),
        sa.Column("total_pending_invitations", sa.Integer(), nullable=True),
        sa.Column("total_pending_suggestions", sa.Integer(), nullable=True),
        *_versions(),
        sa.Column("synced_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_organization_domains"),
    )
    for column in ("organization_id", "name"):
        op.create_index(f"ix_organization_domains_{column}", "organization_domains", [column])

    op.add_column(
        "organization_memberships", sa.Column("listed_permissions", JSON_DOCUMENT, nullable=True)
    )
    op.add_column(
        "organization_memberships", sa.Column("listed_identifier", sa.Text(), nullable=True)
    )
    # Until now each membership held exactly what its newest event listed.
    op.execute(
        "UPDATE organization_memberships "
        "SET listed_permissions = permissions, listed_identifier = identifier"
    )
    # From now on a member's users row gives the profile columns (models.derived); no role is
    # stored yet, so permissions stay what was listed.
    op.execute(
        "UPDATE organization_memberships SET "
        "identifier = COALESCE(users.primary_email_address, users.username, "
        "organization_memberships.listed_identifier), "
        "first_name = users.first_name, last_name = users.last_name, "
        "image_url = users.image_url "
        "FROM users WHERE users.id = organization_memberships.user_id"
    )


def downgrade() -> None:
    with op.batch_alter_table("organization_memberships") as batch:
        batch.drop_column("listed_identifier")
        batch.drop_column("listed_permissions")
    op.drop_table("organization_domains")
    op.drop_table("organization_invitations")
    op.drop_table("organization_permissions")
    op.drop_table("organization_roles")
