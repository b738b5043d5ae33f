"""Rows a batch queues and writes together: one statement per table, not one per event.

Inside ``writing_together``, an upsert of a table that allows it (organizations, users,
memberships) queues its row instead of writing it, keeping per key what the database would
keep: the newest version, or the first of equal ones (the upserts only overwrite an older
version). When the block ends, each table's queue is written with one ``INSERT … ON CONFLICT
DO UPDATE … WHERE older`` executed for all its rows at once (psycopg pipelines them), the
organizations before the memberships that reference them. Meanwhile, whatever reads such rows,
or deletes them by anything but their key, writes their queue first (``write_queued``), and a
deletion by key drops the queued rows it would have deleted (``drop_queued``), so every
statement and the final tables are as if each upsert had been written at once. A failing write
raises; the caller rolls the transaction back. Outside the block nothing is queued and every
upsert writes at once, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import Connection

from models.database import bound, cached_statement

QUEUES: Final = "clerk_sync.queued_rows"
"""``Connection.info`` key: table name → its ``Queue``, inside ``writing_together``."""


@dataclass
class Queue:
    statement_name: str
    build: Callable[[Connection], Any]
    """The multi-row upsert, without RETURNING (``cached_statement``)."""
    requires: tuple[str, ...] = ()
    """Tables whose queued rows must be written first (those its rows reference)."""
    rows: dict[Hashable, tuple[tuple[int, ...], dict[str, Any]]] = field(default_factory=dict)
    """Key → (version, the row's values)."""


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
    version: tuple[int, ...],
    values: dict[str, Any],
    statement: tuple[str, Callable[[Connection], Any]],
    *,
    requires: tuple[str, ...] = (),
) -> bool | None:
    """Queue an upsert's row; None outside ``writing_together`` (write it now). Returns whether
    it was queued: not if the row queued under ``key`` is as new or newer, which the database
    would keep. ``statement`` names and builds the multi-row upsert of ``table``; the queued
    rows of the tables in ``requires`` (which its rows reference) are always written first."""
    queues: dict[str, Queue] | None = connection.info.get(QUEUES)
    if queues is None:
        return None
    queue = queues.get(table)
    if queue is None:
        queue = queues[table] = Queue(*statement, requires=requires)
    queued = queue.rows.get(key)
    if queued is not None and queued[0] >= version:
        return False
    queue.rows[key] = (version, values)
    return True


def write_queued(connection: Connection, table: str) -> None:
    """Write ``table``'s queued rows now: a statement is about to read the table, or to delete
    rows by a column a queued upsert may change."""
    queues: dict[str, Queue] | None = connection.info.get(QUEUES)
    if queues is not None:
        _write(connection, queues, table)


def drop_queued(
    connection: Connection, table: str, matches: Callable[[dict[str, Any]], bool]
) -> None:
    """Forget the queued rows of ``table`` that a DELETE by their key, about to run, would
    remove."""
    queues: dict[str, Queue] | None = connection.info.get(QUEUES)
    if queues is None or table not in queues:
        return
    rows = queues[table].rows
    for key in [key for key, (_, values) in rows.items() if matches(values)]:
        del rows[key]


def _write(connection: Connection, queues: dict[str, Queue], table: str) -> None:
    """Write ``table``'s queued rows, after those of the tables they reference."""
    queue = queues.get(table)
    if queue is None:
        return
    for required in queue.requires:
        _write(connection, queues, required)
    if not queue.rows:
        return
    parameters = [bound(values) for _, values in queue.rows.values()]
    queue.rows.clear()
    connection.execute(cached_statement(connection, queue.statement_name, queue.build), parameters)
