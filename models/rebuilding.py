"""The synced tables re-made beside the live ones, then swapped in at once.

On PostgreSQL, ``rebuild`` fills empty copies of the synced tables in a schema of their own
(``SHADOW_SCHEMA``): its transactions put that schema first on their ``search_path``
(``into_shadow``), so the rules and their raw SQL write there unchanged, and read the event log
from the live schema. ``swap`` then, in one transaction, stops writers (readers go on), lets the
caller apply what was applied live meanwhile, and moves the live tables out and the new ones in:
readers see the old tables or the new ones, never an empty or a partial one. The tombstones
are carried over (``carry_tombstones``), not only re-made. On SQLite the
whole rebuild is one transaction instead (``clear_live_tables``), which readers do not see
until it commits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy import Connection, Table, delete, func, select, text

from models.events import APPLIED
from models.tables import (
    metadata,
    organization_domains,
    organization_invitations,
    organization_memberships,
    organization_permissions,
    organization_roles,
    organizations,
    tombstones,
    users,
    webhook_events,
)

SYNCED_TABLES: Final[tuple[Table, ...]] = (
    organizations,
    organization_memberships,
    users,
    organization_roles,
    organization_permissions,
    organization_invitations,
    organization_domains,
    tombstones,
)
"""What ``rebuild`` re-makes, referenced tables first."""

SHADOW_SCHEMA: Final = "clerk_sync_rebuild"
PREVIOUS_SCHEMA: Final = "clerk_sync_previous"


class PreviousTablesKeptError(RuntimeError):
    """An earlier rebuild kept the tables it replaced (something depends on them): another
    rebuild would have to drop them, and what depends on them with them."""


def check_previous_gone(connection: Connection) -> None:
    """Raise ``PreviousTablesKeptError`` while ``PREVIOUS_SCHEMA`` still holds tables."""
    kept = connection.execute(
        text("SELECT count(*) FROM pg_tables WHERE schemaname = :schema"),
        {"schema": PREVIOUS_SCHEMA},
    ).scalar_one()
    if kept:
        raise PreviousTablesKeptError(
            f"schema {PREVIOUS_SCHEMA} still holds the tables an earlier rebuild replaced "
            "(something depends on them): point that at the live tables, drop the schema, "
            "then rebuild"
        )


def live_schema(connection: Connection) -> str:
    """The schema the application's unqualified table names resolve to."""
    return str(connection.execute(text("SELECT current_schema()")).scalar_one())


def create_shadow(connection: Connection) -> None:
    """(Re)create ``SHADOW_SCHEMA`` holding empty synced tables, as the models define them (the
    migrations test keeps the migrated tables equal to the models)."""
    connection.execute(text(f"DROP SCHEMA IF EXISTS {SHADOW_SCHEMA} CASCADE"))
    connection.execute(text(f"CREATE SCHEMA {SHADOW_SCHEMA}"))
    connection.execute(text(f"SET LOCAL search_path TO {SHADOW_SCHEMA}"))
    metadata.create_all(connection, tables=list(SYNCED_TABLES), checkfirst=False)


def carry_tombstones(connection: Connection, live: str) -> None:
    """Merge the live tombstones into the shadow ones (the widest claim wins, as ``bury``
    merges): deletions no stored event explains (``reconcile`` found them) stay known, and
    the events re-applied after them cannot bring those entities back."""
    connection.execute(
        text(
            f"INSERT INTO {SHADOW_SCHEMA}.tombstones AS stored "  # noqa: S608
            f'SELECT * FROM "{live}".tombstones ON CONFLICT (entity_type, entity_id) DO UPDATE '
            "SET created_at = GREATEST(stored.created_at, excluded.created_at), "
            "deleted_at = LEAST(stored.deleted_at, excluded.deleted_at), "
            "reason = LEAST(stored.reason, excluded.reason)"
        )
    )


def drop_shadow(connection: Connection) -> None:
    connection.execute(text(f"DROP SCHEMA IF EXISTS {SHADOW_SCHEMA} CASCADE"))


def into_shadow(connection: Connection, live: str) -> None:
    """Make this transaction's unqualified names resolve to the shadow tables first, then to the
    live schema (the event log)."""
    connection.execute(text(f'SET LOCAL search_path TO {SHADOW_SCHEMA}, "{live}"'))


def hold_writers(connection: Connection, live: str) -> None:
    """Wait for the live tables' writers to finish and keep new ones waiting until this
    transaction ends; readers are not held (``EXCLUSIVE`` mode)."""
    names = ", ".join(f'"{live}".{table.name}' for table in SYNCED_TABLES)
    connection.execute(text(f"LOCK TABLE {names} IN EXCLUSIVE MODE"))


def swap(connection: Connection, live: str) -> None:
    """Move the live synced tables to ``PREVIOUS_SCHEMA`` and the shadow ones into ``live``,
    with the live tables' grants, in the caller's transaction (call ``hold_writers`` first)."""
    check_previous_gone(connection)
    connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {PREVIOUS_SCHEMA}"))
    for table in SYNCED_TABLES:
        grants = connection.execute(
            text(
                "SELECT grantee, privilege_type FROM information_schema.role_table_grants "
                "WHERE table_schema = :schema AND table_name = :table "
                "AND grantee <> current_user"
            ),
            {"schema": live, "table": table.name},
        ).all()
        connection.execute(text(f'ALTER TABLE "{live}".{table.name} SET SCHEMA {PREVIOUS_SCHEMA}'))
        connection.execute(text(f'ALTER TABLE {SHADOW_SCHEMA}.{table.name} SET SCHEMA "{live}"'))
        for grantee, privilege in grants:
            grantee_sql = "PUBLIC" if grantee == "PUBLIC" else f'"{grantee}"'
            connection.execute(text(f'GRANT {privilege} ON "{live}".{table.name} TO {grantee_sql}'))
    connection.execute(text(f"DROP SCHEMA {SHADOW_SCHEMA}"))


def drop_previous(connection: Connection) -> bool:
    """Drop the tables a swap moved out; False (and they stay) when something outside
    clerk-sync depends on them, such as another application's view."""
    try:
        with connection.begin_nested():
            for table in reversed(SYNCED_TABLES):
                connection.execute(text(f"DROP TABLE {PREVIOUS_SCHEMA}.{table.name}"))
            connection.execute(text(f"DROP SCHEMA {PREVIOUS_SCHEMA}"))
    except Exception:  # noqa: BLE001 - a dependent object: the old tables are kept
        return False
    return True


def clear_live_tables(connection: Connection) -> None:
    """Delete every row of the synced tables but the tombstones, which stay to refuse what
    they refused (SQLite's rebuild, inside its one transaction; see ``carry_tombstones``)."""
    for table in reversed(SYNCED_TABLES):
        if table is not tombstones:
            connection.execute(delete(table))


@dataclass(frozen=True)
class TableChange:
    """How a table's rows would change: by primary key, ignoring ``synced_at`` and
    ``synced_by``."""

    table: str
    rows_before: int
    rows_after: int
    added: int
    removed: int
    changed: int


def compare(
    connection: Connection, before: Callable[[Table], str], after: Callable[[Table], str]
) -> list[TableChange]:
    """How each synced table differs between two copies, named by ``before(table)`` and
    ``after(table)`` (SQL names)."""
    changes = []
    for table in SYNCED_TABLES:
        key = ", ".join(column.name for column in table.primary_key.columns)
        columns = ", ".join(
            column.name for column in table.columns if column.name not in ("synced_at", "synced_by")
        )
        # Names from the table definitions, never from input.
        row = connection.execute(
            text(
                f"WITH b AS (SELECT {columns} FROM {before(table)}),"  # noqa: S608
                f" a AS (SELECT {columns} FROM {after(table)}),"
                f" b_keys AS (SELECT {key} FROM b), a_keys AS (SELECT {key} FROM a) SELECT"
                " (SELECT count(*) FROM b), (SELECT count(*) FROM a),"
                " (SELECT count(*) FROM (SELECT * FROM a_keys EXCEPT SELECT * FROM b_keys) x),"
                " (SELECT count(*) FROM (SELECT * FROM b_keys EXCEPT SELECT * FROM a_keys) x),"
                " (SELECT count(*) FROM (SELECT * FROM a EXCEPT SELECT * FROM b) y)"
                " - (SELECT count(*) FROM (SELECT * FROM a_keys EXCEPT SELECT * FROM b_keys) z)"
            )
        ).one()
        changes.append(TableChange(table.name, *(int(value) for value in row)))
    return changes


def row_counts(connection: Connection) -> dict[str, int]:
    """Rows in each synced table, as this transaction's names resolve."""
    return {
        table.name: int(connection.execute(select(func.count()).select_from(table)).scalar_one())
        for table in SYNCED_TABLES
    }


def copy_for_comparison(connection: Connection) -> Callable[[Table], str]:
    """Copy the synced tables into temporary tables of this transaction (SQLite's dry run,
    rolled back after); returns how to name a table's copy for ``compare``."""
    for table in SYNCED_TABLES:
        connection.exec_driver_sql(
            f"CREATE TEMP TABLE before_{table.name} AS SELECT * FROM main.{table.name}"  # noqa: S608
        )
    return lambda table: f"temp.before_{table.name}"


def applied_since(connection: Connection, processed_after: datetime) -> list[tuple[str, str]]:
    """(svix id, payload) of the events applied after ``processed_after``, in receipt order:
    what live workers applied while a rebuild filled the shadow tables."""
    rows = connection.execute(
        select(webhook_events.c.svix_id, webhook_events.c.payload)
        .where(webhook_events.c.status == APPLIED, webhook_events.c.processed_at >= processed_after)
        .order_by(webhook_events.c.received_at, webhook_events.c.svix_id)
    )
    return [(row.svix_id, row.payload) for row in rows]
