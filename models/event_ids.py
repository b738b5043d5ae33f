"""One row per svix id, written before the event's row: how the inbox stays deduplicated when
``webhook_events`` is partitioned by month of ``received_at`` (PostgreSQL cannot keep ``svix_id``
unique across partitions), and how a lookup by svix id finds its one partition.

The same code runs on SQLite (one table, ``svix_id`` its key), where the id row is redundant
but keeps one code path. A transaction that claims an id inserts the event's row before it
commits, so an id and its row exist together or not at all; a second claim of an uncommitted
id waits for the first transaction, as it waited on the inbox's key before.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, delete, exists, insert, select

from models.statements import insert_for
from models.tables import webhook_event_ids, webhook_events


def stored_received_at(svix_id: Any) -> Any:
    """``received_at`` of the row recorded under ``svix_id`` (a value or a SQL expression)."""
    return (
        select(webhook_event_ids.c.received_at)
        .where(webhook_event_ids.c.svix_id == svix_id)
        .scalar_subquery()
    )


def event_with_id(svix_id: Any) -> ColumnElement[bool]:
    """The ``webhook_events`` row of ``svix_id``, with its ``received_at`` read from the id table,
    so PostgreSQL reads one partition instead of probing every partition's key."""
    return and_(
        webhook_events.c.svix_id == svix_id,
        webhook_events.c.received_at == stored_received_at(svix_id),
    )


def insert_event(connection: Connection, values: dict[str, Any]) -> bool:
    """Insert an inbox row unless its svix id is recorded already; returns whether it was."""
    claimed = connection.execute(
        insert_for(connection, webhook_event_ids)
        .values(svix_id=values["svix_id"], received_at=values["received_at"])
        .on_conflict_do_nothing(index_elements=[webhook_event_ids.c.svix_id])
        .returning(webhook_event_ids.c.svix_id)
    ).first()
    if claimed is None:
        return False
    connection.execute(insert(webhook_events).values(**values))
    return True


def claim_ids(connection: Connection, rows: list[dict[str, Any]]) -> set[str]:
    """Record the svix ids of ``rows`` (in their order) that are new; returns them. The caller
    inserts those rows into ``webhook_events`` in the same transaction."""
    if not rows:
        return set()
    inserted = connection.execute(
        insert_for(connection, webhook_event_ids)
        .on_conflict_do_nothing(index_elements=[webhook_event_ids.c.svix_id])
        .returning(webhook_event_ids.c.svix_id),
        [{"svix_id": row["svix_id"], "received_at": row["received_at"]} for row in rows],
    )
    return {str(svix_id) for svix_id in inserted.scalars()}


def forget_orphans(connection: Connection, svix_ids: list[str]) -> None:
    """Delete the id rows among ``svix_ids`` whose event row is gone: deleted from
    ``webhook_events`` by hand rather than by ``purge``. The event is then new again, as it was
    before the id table, instead of a copy of an event that no longer exists."""
    connection.execute(
        delete(webhook_event_ids).where(
            webhook_event_ids.c.svix_id.in_(svix_ids),
            ~exists().where(
                webhook_events.c.svix_id == webhook_event_ids.c.svix_id,
                webhook_events.c.received_at == webhook_event_ids.c.received_at,
            ),
        )
    )
