"""What the change feed records for a ``rebuild`` (``workers.rebuild``): the differences between
the tables it replaces and the tables it puts in their place, as ordinary changes with source
``rebuild``, in the transaction that swaps them; nothing for a row the rebuild left as it was.

PostgreSQL fills shadow tables (no triggers while they fill: their rows are not changes yet),
then at the swap records the differences and gives the new tables the feed's triggers, so
writes after the swap are recorded as before. SQLite rebuilds in place in one transaction: the
row-by-row deletions and insertions its triggers recorded are replaced by the differences.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from sqlalchemy import JSON, Connection, Table, delete, text

from models.changes.sources import REBUILD
from models.changes.triggers import BOOKKEEPING, LOCK_CLASS, LOCKED_SETTING, SEQUENCE
from models.changes.triggers import postgresql_triggers as _triggers
from models.tables import sync_changes

Name = Callable[[Table], str]

_HOLD_HORIZON = text(
    f"SELECT pg_advisory_xact_lock_shared(({LOCK_CLASS} + (newest >> 32))::int, "  # noqa: S608
    f"(newest & 4294967295)::bit(32)::int), set_config('{LOCKED_SETTING}', 'yes', true) "
    f"FROM (SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END AS newest "
    f"FROM {SEQUENCE}) AS allocated"
)
"""What the triggers do before a transaction's first change, for changes written by hand."""


def feed_tables(tables: Sequence[Table]) -> list[Table]:
    """The tables among ``tables`` the feed records (those with a ``synced_by`` column)."""
    return [table for table in tables if "synced_by" in table.c]


def record_differences(
    connection: Connection, tables: Sequence[Table], before: Name, after: Name
) -> None:
    """Record, for each table, how the rows of ``after(table)`` differ from those of
    ``before(table)`` (SQL names), as changes by ``rebuild``."""
    postgres = connection.dialect.name == "postgresql"
    if postgres:
        connection.execute(_HOLD_HORIZON)
    for table in feed_tables(tables):
        build = _postgresql_differences if postgres else _sqlite_differences
        for statement in build(table, before(table), after(table)):
            connection.execute(text(statement), {"source": REBUILD})


def add_triggers(connection: Connection, schema: str, tables: Sequence[Table]) -> None:
    """Give the tables in ``schema`` the feed's triggers (PostgreSQL, before they are swapped
    in)."""
    for table in feed_tables(tables):
        for statement in _triggers(table.name, schema):
            connection.execute(text(statement))


def forget_changes_after(connection: Connection, last_id: int) -> None:
    """Delete the changes this transaction recorded after ``last_id`` (SQLite's rebuild: the
    deletions and insertions of its clearing and refilling)."""
    connection.execute(delete(sync_changes).where(sync_changes.c.id > last_id))


def _data_columns(table: Table) -> list[str]:
    return [column.name for column in table.columns if column.name not in BOOKKEEPING]


_INSERT = (
    "INSERT INTO sync_changes (table_name, entity_id, operation, changed_columns, row_values, "
    "source) "
)


def _postgresql_differences(table: Table, before: str, after: str) -> list[str]:
    names = "ARRAY[" + ", ".join(f"'{name}'" for name in _data_columns(table)) + "]::text[]"
    changed = (
        f"(SELECT jsonb_agg(c ORDER BY p) FROM unnest({names}) WITH ORDINALITY AS x(c, p) "  # noqa: S608
        "WHERE to_jsonb(n) -> c IS DISTINCT FROM to_jsonb(o) -> c)"
    )
    return [
        _INSERT + f"SELECT '{table.name}', coalesce(n.id, o.id), "  # noqa: S608 - our names
        "CASE WHEN o.id IS NULL THEN 'insert' WHEN n.id IS NULL THEN 'delete' ELSE 'update' END, "
        f"CASE WHEN o.id IS NULL THEN to_jsonb({names}) WHEN n.id IS NULL THEN '[]'::jsonb "
        f"ELSE {changed} END, "
        "coalesce(to_jsonb(n), to_jsonb(o)) - 'synced_at' - 'synced_by', :source "
        f"FROM {after} AS n FULL JOIN {before} AS o ON o.id = n.id "
        f"WHERE o.id IS NULL OR n.id IS NULL OR {changed} IS NOT NULL "
        "ORDER BY coalesce(n.id, o.id)"
    ]


def _sqlite_differences(table: Table, before: str, after: str) -> list[str]:
    data = _data_columns(table)
    documents = {column.name for column in table.columns if isinstance(column.type, JSON)}

    def snapshot(row: str) -> str:
        return (
            "json_object("
            + ", ".join(
                f"'{name}', " + (f"json({row}.{name})" if name in documents else f"{row}.{name}")
                for name in data
            )
            + ")"
        )

    differs = " OR ".join(f"n.{name} IS NOT o.{name}" for name in data)
    changed = " UNION ALL ".join(
        f"SELECT '{name}' AS c WHERE n.{name} IS NOT o.{name}" for name in data
    )
    every = "json_array(" + ", ".join(f"'{name}'" for name in data) + ")"
    return [
        _INSERT + f"SELECT '{table.name}', n.id, "  # noqa: S608 - our names
        f"CASE WHEN o.id IS NULL THEN 'insert' ELSE 'update' END, "
        f"CASE WHEN o.id IS NULL THEN {every} "
        f"ELSE (SELECT json_group_array(c) FROM ({changed})) END, "
        f"{snapshot('n')}, :source FROM {after} AS n LEFT JOIN {before} AS o ON o.id = n.id "
        f"WHERE o.id IS NULL OR {differs} ORDER BY n.id",
        _INSERT + f"SELECT '{table.name}', o.id, 'delete', json_array(), {snapshot('o')}, "  # noqa: S608
        f":source FROM {before} AS o LEFT JOIN {after} AS n ON n.id = o.id WHERE n.id IS NULL "
        "ORDER BY o.id",
    ]
