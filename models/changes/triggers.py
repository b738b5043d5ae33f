"""The triggers that write ``sync_changes``: SQL built from a table's columns as the database
holds them, so a migration freezes what it installs (it passes the columns it reads, never the
models'), and ``rebuild`` installs the same on the tables it swaps in.

PostgreSQL: a PL/pgSQL function per table, run once per statement with its transition tables
(``REFERENCING``): an upsert of a hundred rows records its changes with one ``INSERT ... SELECT``,
the changed columns found by comparing the old and new rows column by column (a generic function
comparing ``to_jsonb`` of the rows cost PostgreSQL three times the CPU per event; decision 0004).
Before its first change, a transaction takes a shared advisory lock keyed on the newest id
allocated so far (``models.changes.reading`` explains why readers need it), and ``pg_notify``
wakes listeners when the transaction commits. SQLite: three row triggers per table,
``OLD.c IS NOT NEW.c`` per column.

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

_PG_PROLOGUE: Final = f"""
    IF current_setting('{LOCKED_SETTING}', true) IS DISTINCT FROM 'yes' THEN
        SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END
            INTO newest FROM {SEQUENCE};
        PERFORM pg_advisory_xact_lock_shared(
            ({LOCK_CLASS} + (newest >> 32))::int, (newest & 4294967295)::bit(32)::int);
        PERFORM set_config('{LOCKED_SETTING}', 'yes', true);
    END IF;"""  # noqa: S608 - constants only
_PG_INSERT: Final = (
    "INSERT INTO sync_changes (table_name, entity_id, operation, changed_columns, row_values, "
    "source)"
)


def postgresql_function(table: str, columns: Sequence[str]) -> str:
    """``CREATE OR REPLACE FUNCTION`` of ``table``'s trigger function, whose columns (in
    order) are ``columns``: the changed columns are found by comparing each column of the old
    and new rows natively (``IS DISTINCT FROM``), and only a changed row is turned into JSON."""
    data = [name for name in columns if name not in BOOKKEEPING]
    every = "'[" + ", ".join(f'"{name}"' for name in data) + "]'::jsonb"
    compared = ", ".join(
        f"CASE WHEN n.{name} IS DISTINCT FROM o.{name} THEN '{name}' END" for name in data
    )
    snapshot = "to_jsonb(n) - 'synced_at' - 'synced_by'"
    return f"""
CREATE OR REPLACE FUNCTION {FUNCTION}_{table}() RETURNS trigger LANGUAGE plpgsql AS $body$
DECLARE
    newest bigint;
BEGIN{_PG_PROLOGUE}
    IF TG_OP = 'INSERT' THEN
        {_PG_INSERT}
        SELECT '{table}', n.id, 'insert', {every}, {snapshot}, n.synced_by FROM new_rows AS n;
    ELSIF TG_OP = 'UPDATE' THEN
        {_PG_INSERT}
        SELECT '{table}', d.id, 'update', to_jsonb(d.changed), d.snapshot, d.synced_by
        FROM (
            SELECT n.id, n.synced_by, {snapshot} AS snapshot,
                array_remove(ARRAY[{compared}], NULL) AS changed
            FROM new_rows AS n JOIN old_rows AS o ON o.id = n.id
        ) AS d
        WHERE cardinality(d.changed) > 0;
    ELSE
        {_PG_INSERT}
        SELECT '{table}', o.id, 'delete', '[]'::jsonb, to_jsonb(o) - 'synced_at' - 'synced_by',
            NULLIF(current_setting('{SOURCE_SETTING}', true), '')
        FROM old_rows AS o;
    END IF;
    IF FOUND THEN
        PERFORM pg_notify('{CHANNEL}', '');
    END IF;
    RETURN NULL;
END
$body$
"""  # noqa: S608 - names from the table's definition


def postgresql_triggers(table: str, schema: str | None = None) -> list[str]:
    """The three statement triggers of ``table`` (in ``schema``, else as the search path
    resolves it)."""
    name = f'"{schema}".{table}' if schema else table
    execute = f"FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}_{table}()"
    return [
        f"CREATE TRIGGER clerk_sync_changes_insert AFTER INSERT ON {name} "
        f"REFERENCING NEW TABLE AS new_rows {execute}",
        f"CREATE TRIGGER clerk_sync_changes_update AFTER UPDATE ON {name} "
        f"REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows {execute}",
        f"CREATE TRIGGER clerk_sync_changes_delete AFTER DELETE ON {name} "
        f"REFERENCING OLD TABLE AS old_rows {execute}",
    ]


def postgresql_drop_triggers(table: str) -> list[str]:
    """Drop ``table``'s triggers and their function."""
    return [
        *(
            f"DROP TRIGGER IF EXISTS clerk_sync_changes_{operation} ON {table}"
            for operation in ("insert", "update", "delete")
        ),
        f"DROP FUNCTION IF EXISTS {FUNCTION}_{table}()",
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
        f"CREATE TRIGGER clerk_sync_changes_delete_{table} AFTER DELETE ON {table} BEGIN "
        f"{insert} ('{table}', OLD.id, 'delete', json_array(), {snapshot('OLD')}, "
        "OLD.synced_by); END",
    ]


def sqlite_drop_triggers(table: str) -> list[str]:
    return [
        f"DROP TRIGGER IF EXISTS clerk_sync_changes_{operation}_{table}"
        for operation in ("insert", "update", "delete")
    ]
