"""Rows a batch queues and writes together: one statement per table, not one per event.

Inside ``writing_together``, an upsert of a table that allows it (organizations, users,
memberships, tombstones) queues its row instead of writing it, keeping per key what the
database would keep: the newest version, or the first of equal ones (the upserts only overwrite
an older version); a tombstone's row comes merged with the one stored, and replaces it. A
deletion by key whose later upserts the batch refuses anyway (they find the tombstone it
leaves) is queued too, and runs after the table's queued rows. When the block ends, each
table's queue is written with one ``INSERT … ON CONFLICT DO UPDATE … WHERE older`` for all its
rows (``models.database.insert_rows``), then its queued deletions, the organizations
before the memberships that reference them. Meanwhile, whatever reads such rows, or deletes
them by anything but their key, writes their queue first (``write_queued``), and a deletion by
key drops the queued rows it would have deleted (``drop_queued``), so every statement and the
final tables are as if each upsert and deletion had been written at once. A failing write
raises; the caller rolls the transaction back. Outside the block nothing is queued and every
upsert and deletion runs at once, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import Connection

from models.database import cached_statement, rows_parameters

QUEUES: Final = "clerk_sync.queued_rows"
"""``Connection.info`` key: table name → its ``Queue``, inside ``writing_together``."""


Statement = tuple[str, Callable[[Connection], Any]]
"""A statement's name and its builder, for ``cached_statement``."""


@dataclass
class Queue:
    upsert: Statement | None = None
    """The multi-row upsert, without RETURNING; None while only deletions are queued."""
    requires: tuple[str, ...] = ()
    """Tables whose queued rows must be written first (those its rows reference)."""
    rows: dict[Hashable, tuple[tuple[int, ...], dict[str, Any]]] = field(default_factory=dict)
    """Key → (version, the row's values)."""
    deletions: dict[Statement, list[dict[str, Any]]] = field(default_factory=dict)
    """Each deletion by key, with the parameters of every time it was queued."""


@contextmanager
def writing_together(connection: Connection) -> Iterator[None]:
    """Queue the rows of the upserts in this block and write them when it ends (not if it
    raises: the transaction is being rolled back anyway)."""
    queues: dict[str, Queue] = {}
    connection.info[QUEUES] = queues
    try:
        yield
    finally:
        # ``info`` belongs to the pooled DBAPI connection and outlives the transaction.
        connection.info.pop(QUEUES, None)
    for table in list(queues):
        _write(connection, queues, table)


def queue_row(
    connection: Connection,
    table: str,
    key: Hashable,
    version: tuple[int, ...] | None,
    values: dict[str, Any],
    statement: Statement,
    *,
    requires: tuple[str, ...] = (),
) -> bool | None:
    """Queue an upsert's row; None outside ``writing_together`` (write it now). Returns whether
    it was queued: not if the row queued under ``key`` is as new or newer, which the database
    would keep. A ``version`` of None replaces whatever is queued under ``key`` (the row is
    merged with it already). ``statement`` names and builds the multi-row upsert of ``table``;
    the queued rows of the tables in ``requires`` (which its rows reference) are always written
    first."""
    queue = _queue(connection, table)
    if queue is None:
        return None
    queue.upsert = statement
    queue.requires = requires
    queued = queue.rows.get(key)
    if queued is not None and version is not None and queued[0] >= version:
        return False
    queue.rows[key] = (version or (), values)
    return True


def delete_by_key(
    connection: Connection, table: str, statement: Statement, parameters: dict[str, Any]
) -> None:
    """Run a deletion by key, or inside ``writing_together`` queue it to run after ``table``'s
    queued rows are written. Only for a deletion whose key the batch's later upserts refuse (a
    tombstone guards it), after ``drop_queued`` removed the queued rows it would delete: it then
    removes the same rows whether it runs now or after the table's queued rows."""
    queue = _queue(connection, table)
    if queue is None:
        connection.execute(cached_statement(connection, *statement), parameters)
        return
    queue.deletions.setdefault(statement, []).append(parameters)


def _queue(connection: Connection, table: str) -> Queue | None:
    queues: dict[str, Queue] | None = connection.info.get(QUEUES)
    if queues is None:
        return None
    queue = queues.get(table)
    if queue is None:
        queue = queues[table] = Queue()
    return queue


def write_queued(connection: Connection, table: str) -> None:
    """Write ``table``'s queued rows now: a statement is about to read the table, or to delete
    rows by a column a queued upsert may change."""
    queues: dict[str, Queue] | None = connection.info.get(QUEUES)
    if queues is not None:
        _write(connection, queues, table)


def drop_queued(
    connection: Connection, table: str, matches: Callable[[dict[str, Any]], bool]
) -> None:
    """Forget the queued rows of ``table`` that a DELETE by their key, about to run or be
    queued, would remove."""
    queues: dict[str, Queue] | None = connection.info.get(QUEUES)
    if queues is None or table not in queues:
        return
    rows = queues[table].rows
    for key in [key for key, (_, values) in rows.items() if matches(values)]:
        del rows[key]


def _write(connection: Connection, queues: dict[str, Queue], table: str) -> None:
    """Write ``table``'s queued rows, after those of the tables they reference, then run its
    queued deletions."""
    queue = queues.get(table)
    if queue is None:
        return
    for required in queue.requires:
        _write(connection, queues, required)
    if queue.rows and queue.upsert is not None:
        parameters = rows_parameters(connection, [values for _, values in queue.rows.values()])
        queue.rows.clear()
        connection.execute(cached_statement(connection, *queue.upsert), parameters)
    deletions = list(queue.deletions.items())
    queue.deletions.clear()
    for statement, keys in deletions:
        connection.execute(cached_statement(connection, *statement), keys)
