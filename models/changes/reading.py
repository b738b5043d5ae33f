"""Reading the change feed: the changes after an id, safely in id order, and a consumer's
position, saved in the consumer's own transaction.

Why a horizon: ids are allocated when a change is written, not when its transaction commits. On
PostgreSQL two workers' transactions commit in any order, so id 11 can be visible while id 10
is still to commit; a reader that moved its position to 11 would never see 10. Each writing
transaction therefore holds, from before its first change until it ends, a shared advisory lock
keyed on the newest id allocated before it (``models.changes.triggers``): all its ids are
greater. A reader reads the newest allocated id, then the smallest such key among the locks
held, and returns only ids up to the smaller of the two (``horizon``): every id at or below it
belongs to a transaction that has ended (committed, or rolled back for good). The steps must
run in that order and the rows be read by a later statement, which READ COMMITTED (the default)
guarantees. SQLite has one writer at a time: ids are allocated in commit order.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import Connection, delete, func, select, text

from models.changes.triggers import LOCK_CLASS, SEQUENCE
from models.statements import insert_for
from models.tables import sync_change_positions, sync_changes

OPERATIONS: Final = ("insert", "update", "delete")

_NEWEST_ALLOCATED: Final = text(
    f"SELECT CASE WHEN is_called THEN last_value ELSE last_value - 1 END FROM {SEQUENCE}"  # noqa: S608
)
_OLDEST_WRITER: Final = text(
    f"SELECT min(((classid::bigint - {LOCK_CLASS}) << 32) | objid::bigint) FROM pg_locks "  # noqa: S608
    "WHERE locktype = 'advisory' AND objsubid = 2 AND database = "
    "(SELECT oid FROM pg_database WHERE datname = current_database()) "
    f"AND classid::bigint BETWEEN {LOCK_CLASS} AND {LOCK_CLASS + 0xFFFF}"
)


@dataclass(frozen=True)
class Change:
    """One row of ``sync_changes``: what happened to one row of a synced table."""

    id: int
    table: str
    entity_id: str
    operation: str
    """``insert``, ``update`` or ``delete``."""
    columns: list[str]
    """The columns that changed (an insert: every column; a delete: none)."""
    values: dict[str, Any] | None
    """The row after the change (a delete: the row as it was), without ``synced_at`` and
    ``synced_by``."""
    source: str | None
    """The svix id of the event that made the change, ``reconcile`` or ``rebuild``."""
    changed_at: datetime

    def as_message(self) -> dict[str, Any]:
        """A JSON document of this change (the fan-out's task argument, ``changes tail --json``)."""
        changed_at = self.changed_at
        if changed_at.tzinfo is None:
            changed_at = changed_at.replace(tzinfo=UTC)
        return {
            "id": self.id,
            "table": self.table,
            "entity_id": self.entity_id,
            "operation": self.operation,
            "columns": self.columns,
            "values": self.values,
            "source": self.source,
            "changed_at": changed_at.isoformat(),
        }


def horizon(connection: Connection) -> int | None:
    """The newest id a reader may return now (None: no limit, SQLite); see the module
    docstring."""
    if connection.dialect.name != "postgresql":
        return None
    newest = int(connection.execute(_NEWEST_ALLOCATED).scalar_one())
    oldest_writer = connection.execute(_OLDEST_WRITER).scalar_one()
    return newest if oldest_writer is None else min(newest, int(oldest_writer))


def changes_after(
    connection: Connection,
    after: int,
    limit: int = 500,
    *,
    tables: Collection[str] | None = None,
) -> list[Change]:
    """The changes with an id greater than ``after``, oldest first, at most ``limit``; never
    one whose id a transaction still running could precede (``horizon``). ``tables``: only
    changes to these tables."""
    statement = select(sync_changes).where(sync_changes.c.id > after)
    limit_id = horizon(connection)
    if limit_id is not None:
        statement = statement.where(sync_changes.c.id <= limit_id)
    if tables is not None:
        statement = statement.where(sync_changes.c.table_name.in_(list(tables)))
    rows = connection.execute(statement.order_by(sync_changes.c.id).limit(limit))
    return [
        Change(
            id=int(row.id),
            table=row.table_name,
            entity_id=row.entity_id,
            operation=row.operation,
            columns=list(row.changed_columns or ()),
            values=row.row_values,
            source=row.source,
            changed_at=row.changed_at,
        )
        for row in rows
    ]


def newest_change_id(connection: Connection) -> int:
    """The newest id in ``sync_changes`` (0 when empty): where a consumer starts that wants
    only what changes from now on."""
    return int(
        connection.execute(select(func.coalesce(func.max(sync_changes.c.id), 0))).scalar_one()
    )


def read_position(connection: Connection, consumer: str, *, lock: bool = False) -> int:
    """The id of the last change ``consumer`` finished with (0: none). With ``lock`` (PostgreSQL),
    the position's row is locked until the transaction ends, so two copies of a consumer take
    turns instead of both applying the same changes."""
    statement = select(sync_change_positions.c.last_id).where(
        sync_change_positions.c.consumer == consumer
    )
    if lock and connection.dialect.name == "postgresql":
        _ensure_position(connection, consumer)
        statement = statement.with_for_update()
    found = connection.execute(statement).scalar_one_or_none()
    return 0 if found is None else int(found)


def save_position(connection: Connection, consumer: str, last_id: int) -> None:
    """Record that ``consumer`` finished with every change up to ``last_id``, in the caller's
    transaction: commit it together with what the consumer did with those changes, and a crash
    can neither lose a change nor apply one twice. The position never moves back."""
    statement = insert_for(connection, sync_change_positions).values(
        consumer=consumer, last_id=last_id, updated_at=datetime.now(UTC)
    )
    connection.execute(
        statement.on_conflict_do_update(
            index_elements=[sync_change_positions.c.consumer],
            set_={
                "last_id": func.max(statement.excluded.last_id, sync_change_positions.c.last_id)
                if connection.dialect.name == "sqlite"
                else func.greatest(statement.excluded.last_id, sync_change_positions.c.last_id),
                "updated_at": statement.excluded.updated_at,
            },
        )
    )


def _ensure_position(connection: Connection, consumer: str) -> None:
    statement = insert_for(connection, sync_change_positions).values(
        consumer=consumer, last_id=0, updated_at=datetime.now(UTC)
    )
    connection.execute(statement.on_conflict_do_nothing())


def purge_changes(connection: Connection, older_than: timedelta) -> int:
    """Delete the changes recorded more than ``older_than`` ago; returns how many. A consumer
    whose position is older than what remains has missed the purged changes (see
    docs/changes.md: size the retention above the longest a consumer may stop)."""
    cutoff = datetime.now(UTC) - older_than
    # SQLite keeps CURRENT_TIMESTAMP as UTC text, which the cutoff (UTC) is rendered like.
    result = connection.execute(delete(sync_changes).where(sync_changes.c.changed_at < cutoff))
    return int(result.rowcount or 0)


@dataclass(frozen=True)
class FeedSummary:
    newest_id: int
    rows: int
    behind: int
    """Rows after the position ``summarise_feed`` was given (a consumer's backlog)."""


def summarise_feed(connection: Connection, position: int = 0) -> FeedSummary:
    """The newest id (0: none), the rows kept, and those after ``position``, for the metrics."""
    row = connection.execute(
        select(
            func.coalesce(func.max(sync_changes.c.id), 0),
            func.count(),
            func.count().filter(sync_changes.c.id > position),
        ).select_from(sync_changes)
    ).one()
    return FeedSummary(int(row[0]), int(row[1]), int(row[2]))
