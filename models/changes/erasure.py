"""A deleted user's personal data in the change feed: the row snapshots (``row_values``) of
their ``users`` row and of the memberships and invitations naming them keep ids, times and
structure, and lose names, addresses, pictures and metadata (``workers.erasure`` runs this with
the erasure of their stored events)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from sqlalchemy import Boolean, ColumnElement, Connection, literal_column, or_, update

from models.tables import sync_changes

PERSONAL: Final = {
    "users": (
        "primary_email_address",
        "username",
        "first_name",
        "last_name",
        "image_url",
        "external_id",
        "public_metadata",
    ),
    "organization_memberships": (
        "identifier",
        "listed_identifier",
        "first_name",
        "last_name",
        "image_url",
        "public_metadata",
    ),
    "organization_invitations": ("email_address", "public_metadata"),
}
"""Per table, the columns of a snapshot that hold personal data (set to null)."""


def erase_from_feed(connection: Connection, user_ids: Sequence[str]) -> int:
    """Blank the personal fields of the changes about these users; returns how many changed."""
    if not user_ids:
        return 0
    ids = list(user_ids)
    changed = 0
    for table, fields in PERSONAL.items():
        about = (
            sync_changes.c.entity_id.in_(ids)
            if table == "users"
            else sync_changes.c.row_values["user_id"].as_string().in_(ids)
        )
        blanked = _blanked(connection, fields)
        result = connection.execute(
            update(sync_changes)
            .where(
                sync_changes.c.table_name == table, about, sync_changes.c.row_values.is_not(None)
            )
            .where(or_(*(_present(connection, name) for name in fields)))
            .values(row_values=blanked)
        )
        changed += int(result.rowcount or 0)
    return changed


def _blanked(connection: Connection, fields: Sequence[str]) -> ColumnElement[Any]:
    """SQL for ``row_values`` with ``fields`` set to JSON null."""
    if connection.dialect.name == "postgresql":
        pairs = ", ".join(f"'{name}', null" for name in fields)
        return literal_column(f"row_values || jsonb_build_object({pairs})")
    paths = ", ".join(f"'$.{name}', json('null')" for name in fields)
    return literal_column(f"json_set(row_values, {paths})")


def _present(connection: Connection, name: str) -> ColumnElement[bool]:
    """SQL: the snapshot holds a value (not null) for ``name``."""
    if connection.dialect.name == "postgresql":
        sql = f"jsonb_typeof(row_values -> '{name}') IS DISTINCT FROM 'null'"
    else:
        sql = f"json_type(row_values, '$.{name}') IS NOT 'null'"
    return literal_column(sql, Boolean())
