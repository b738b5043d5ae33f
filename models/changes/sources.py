"""Who made a change: the ``source`` the triggers record with it.

An inserted or updated row carries its source in its own ``synced_by`` column (the unit of work
puts it in every upserted row, so rows written together keep each event's svix id). A deleted
row is gone, so its deletion's source is said beforehand: on PostgreSQL, the deletion sets the
transaction's ``clerk_sync.source`` (``set_config``) in its own ``WHERE`` clause, so a batch of
deletions sent together still names each one's source; on SQLite, whose writers take turns, a
one-row table (``sync_change_context``) is updated before each deletion. Rows a deletion takes
along (``ON DELETE CASCADE``) share its source.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from sqlalchemy import Connection, bindparam, func, text

from models.changes.triggers import SOURCE_SETTING

RECONCILE: Final = "reconcile"
REBUILD: Final = "rebuild"
SOURCE_PARAMETER: Final = "p_source"


def deletion_source_clause() -> Any:
    """A ``WHERE`` term (always true) that makes a PostgreSQL deletion set the source of the
    rows it deletes, from the bound ``p_source``."""
    return func.set_config(
        SOURCE_SETTING, func.coalesce(bindparam(SOURCE_PARAMETER), ""), True
    ).is_not(None)


_SET_CONTEXT: Final = text(
    "INSERT INTO sync_change_context (id, source) VALUES (1, :p_source) "
    "ON CONFLICT (id) DO UPDATE SET source = excluded.source"
)
"""SQLite: name the source (an upsert: the row may have been deleted with the table's rows)."""


def run_deletions(
    connection: Connection, statement: Any, parameters: Sequence[dict[str, Any]]
) -> None:
    """Run a deletion once per parameters (each with its ``p_source``): on PostgreSQL together
    (the statement sets its own source); on SQLite one by one, after naming its source."""
    if connection.dialect.name == "postgresql":
        connection.execute(statement, list(parameters))
        return
    named: object = object()
    for keys in parameters:
        source = keys.get(SOURCE_PARAMETER)
        if source != named:
            connection.execute(_SET_CONTEXT, {SOURCE_PARAMETER: source})
            named = source
        connection.execute(statement, keys)


def set_deletion_source(connection: Connection, source: str | None) -> None:
    """Name the source of the deletions that follow in this transaction which do not name
    their own (a rebuild's or a test's bulk ``DELETE``)."""
    if connection.dialect.name == "postgresql":
        connection.execute(func.set_config(SOURCE_SETTING, source or "", True).select())
    else:
        connection.execute(_SET_CONTEXT, {SOURCE_PARAMETER: source})
