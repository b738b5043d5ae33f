"""The triggers that write ``sync_changes``: SQL built from a table's columns as the database
holds them, so a migration freezes what it installs (it passes the columns it reads, never the
models'), and ``rebuild`` installs the same on the tables it swaps in.

PostgreSQL: one generic PL/pgSQL function, run once per statement with its transition tables
(``REFERENCING``): an upsert of a hundred rows records its changes with one ``INSERT ... SELECT``,
the changed columns found by comparing ``to_jsonb`` of the old and new rows. Before its first
change, a transaction takes a shared advisory lock keyed on the newest id allocated so far
(``models.changes.reading`` explains why readers need it), and ``pg_notify`` wakes listeners when
the transaction commits. SQLite: three row triggers per table, ``OLD.c IS NOT NEW.c`` per column.

Columns ``synced_at`` and ``synced_by`` are bookkeeping: a write changing only them records
nothing, and the row snapshot leaves them out (``synced_by`` is the change's ``source``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

CHANNEL: Final = "clerk_sync_changes"
"""The PostgreSQL notification channel (``LISTEN clerk_sync_changes``)."""
BOOKKEEPING: Final = ("synced_at", "synced_by")
FUNCTION: Final = "clerk_sync_record_changes"
LOCK_CLASS: Final = 0x4C530000
"""The first key of the feed's two-key advisory locks is ``LOCK_CLASS + (id >> 32)``; clerk-sync's
other advisory locks take one 64-bit key (``objsubid`` 1 in ``pg_locks``), these two (2)."""
SEQUENCE: Final = "sync_changes_id_seq"
SOURCE_SETTING: Final = "clerk_sync.source"
"""The transaction's setting naming the source of the deletions that follow (PostgreSQL)."""
LOCKED_SETTING: Final = "clerk_sync.feed_locked"

_PG_FUNCTION: Final = f"""
CREATE OR REPLACE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $body$
DECLARE
    newest bigint;
    names text[];
BEGIN
    IF current_setting('{LOCKED_SETTING}', true) IS DISTINCT FROM 'yes' THEN
        SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END
            INTO newest FROM {SEQUENCE};
        PERFORM pg_advisory_xact_lock_shared(
            ({LOCK_CLASS} + (newest >> 32))::int, (newest & 4294967295)::bit(32)::int);
        PERFORM set_config('{LOCKED_SETTING}', 'yes', true);
    END IF;
    SELECT array_agg(attname::text ORDER BY attnum) INTO names FROM pg_attribute
        WHERE attrelid = TG_RELID AND attnum > 0 AND NOT attisdropped
        AND attname NOT IN ('synced_at', 'synced_by');
    IF TG_OP = 'INSERT' THEN
        INSERT INTO sync_changes
            (table_name, entity_id, operation, changed_columns, row_values, source)
        SELECT TG_TABLE_NAME, n.id, 'insert', to_jsonb(names),
            to_jsonb(n) - 'synced_at' - 'synced_by', n.synced_by
        FROM new_rows AS n ORDER BY n.id;
    ELSIF TG_OP = 'UPDATE' THEN
        INSERT INTO sync_changes
            (table_name, entity_id, operation, changed_columns, row_values, source)
        SELECT TG_TABLE_NAME, d.id, 'update', d.changed,
            d.after - 'synced_at' - 'synced_by', d.after ->> 'synced_by'
        FROM (
            SELECT n.id, a.after, (
                SELECT jsonb_agg(name ORDER BY position)
                FROM unnest(names) WITH ORDINALITY AS c(name, position)
                WHERE a.after -> name IS DISTINCT FROM b.before -> name
            ) AS changed
            FROM new_rows AS n JOIN old_rows AS o ON o.id = n.id,
            LATERAL (SELECT to_jsonb(n) AS after) AS a,
            LATERAL (SELECT to_jsonb(o) AS before) AS b
        ) AS d
        WHERE d.changed IS NOT NULL ORDER BY d.id;
    ELSE
        INSERT INTO sync_changes
            (table_name, entity_id, operation, changed_columns, row_values, source)
        SELECT TG_TABLE_NAME, o.id, 'delete', '[]'::jsonb,
            to_jsonb(o) - 'synced_at' - 'synced_by',
            NULLIF(current_setting('{SOURCE_SETTING}', true), '')
        FROM old_rows AS o ORDER BY o.id;
    END IF;
    IF FOUND THEN
        PERFORM pg_notify('{CHANNEL}', '');
    END IF;
    RETURN NULL;
END
$body$
"""  # noqa: S608 - constants only


def postgresql_function() -> str:
    """``CREATE OR REPLACE FUNCTION`` of the trigger function every synced table shares."""
    return _PG_FUNCTION


def postgresql_triggers(table: str, schema: str | None = None) -> list[str]:
    """The three statement triggers of ``table`` (in ``schema``, else as the search path
    resolves it)."""
    name = f'"{schema}".{table}' if schema else table
    execute = f"FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}()"
    return [
        f"CREATE TRIGGER clerk_sync_changes_insert AFTER INSERT ON {name} "
        f"REFERENCING NEW TABLE AS new_rows {execute}",
        f"CREATE TRIGGER clerk_sync_changes_update AFTER UPDATE ON {name} "
        f"REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows {execute}",
        f"CREATE TRIGGER clerk_sync_changes_delete AFTER DELETE ON {name} "
        f"REFERENCING OLD TABLE AS old_rows {execute}",
    ]


def postgresql_drop_triggers(table: str) -> list[str]:
    return [
        f"DROP TRIGGER IF EXISTS clerk_sync_changes_{operation} ON {table}"
        for operation in ("insert", "update", "delete")
    ]


def sqlite_triggers(table: str, columns: Sequence[str], json_columns: Sequence[str]) -> list[str]:
    """The three row triggers of ``table``, whose columns (in order) are ``columns``, of which
    ``json_columns`` hold JSON documents."""
    data = [name for name in columns if name not in BOOKKEEPING]

    def snapshot(row: str) -> str:
        pairs = ", ".join(
            f"'{name}', " + (f"json({row}.{name})" if name in json_columns else f"{row}.{name}")
            for name in data
        )
        return f"json_object({pairs})"

    differs = " OR ".join(f"OLD.{name} IS NOT NEW.{name}" for name in data)
    changed = " UNION ALL ".join(
        f"SELECT '{name}' AS name WHERE OLD.{name} IS NOT NEW.{name}" for name in data
    )
    every = "json_array(" + ", ".join(f"'{name}'" for name in data) + ")"
    insert = (
        "INSERT INTO sync_changes (table_name, entity_id, operation, changed_columns, "
        "row_values, source) VALUES"
    )
    return [
        f"CREATE TRIGGER clerk_sync_changes_insert_{table} AFTER INSERT ON {table} BEGIN "
        f"{insert} ('{table}', NEW.id, 'insert', {every}, {snapshot('NEW')}, NEW.synced_by); END",
        f"CREATE TRIGGER clerk_sync_changes_update_{table} AFTER UPDATE ON {table} "  # noqa: S608
        f"WHEN {differs} BEGIN "
        f"{insert} ('{table}', NEW.id, 'update', "
        f"(SELECT json_group_array(name) FROM ({changed})), {snapshot('NEW')}, NEW.synced_by); "
        "END",
        f"CREATE TRIGGER clerk_sync_changes_delete_{table} AFTER DELETE ON {table} BEGIN "  # noqa: S608
        f"{insert} ('{table}', OLD.id, 'delete', json_array(), {snapshot('OLD')}, "
        "(SELECT source FROM sync_change_context WHERE id = 1)); END",
    ]


def sqlite_drop_triggers(table: str) -> list[str]:
    return [
        f"DROP TRIGGER IF EXISTS clerk_sync_changes_{operation}_{table}"
        for operation in ("insert", "update", "delete")
    ]
