"""Who made a change: the ``source`` the triggers record with it.

An inserted or updated row carries its source in its own ``synced_by`` column (the unit of work
puts it in every upserted row, so rows written together keep each event's svix id). A deleted
row is gone, so its deletion's source is said beforehand: on PostgreSQL, the deletion sets the
transaction's ``clerk_sync.source`` (``set_config``) in its own ``WHERE`` clause, so a batch of
deletions sent together still names each one's source, and rows it takes along (``ON DELETE
CASCADE``) share it; on SQLite, which has no such settings, the rows about to be deleted get
their ``synced_by`` set first (``run_deletions``), and the delete trigger reads the old row's.
(clerk-sync deletes a deleted organization's or user's memberships itself, before the
organization or user, so a cascade only runs for deletions by hand.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from sqlalchemy import Connection, bindparam, func, update

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


def run_deletions(
    connection: Connection, statement: Any, parameters: Sequence[dict[str, Any]]
) -> None:
    """Run a deletion once per parameters (each with its ``p_source``), all sent together. On
    PostgreSQL the statement sets its own source; on SQLite the rows about to go first get their
    ``synced_by`` set to it (one ``UPDATE`` with the deletion's ``WHERE``, which records no change:
    ``synced_by`` is bookkeeping), and the delete trigger reads it from the old row."""
    keys = list(parameters)
    if connection.dialect.name != "postgresql":
        marking = update(statement.table).where(statement.whereclause)
        connection.execute(marking.values(synced_by=bindparam(SOURCE_PARAMETER)), keys)
    connection.execute(statement, keys)
