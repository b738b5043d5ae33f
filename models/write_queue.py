"""Rows a batch queues and writes together: one statement per table, not one per event.

The unit of work (``models.unit_of_work``) queues an upsert's row here instead of writing it,
keeping per key what the database would keep: the newest version, or the first of equal ones
(the upserts only overwrite an older version); a tombstone's row comes merged with the one
stored, and replaces it. A deletion by key comes queued too, and runs after the table's queued
rows. ``write`` writes a table's queue with one ``INSERT … ON CONFLICT DO UPDATE … WHERE older``
for all its rows (``models.statements.insert_rows``), after the tables its rows reference,
then its deletions. A failing write raises; the caller rolls the transaction back.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

from models.changes.sources import run_deletions
from models.statements import rows_parameters

StatementOf = Callable[[Connection], Any]
"""The statement (built once per dialect) to run on a connection."""


@dataclass
class _TableQueue:
    upsert: StatementOf | None = None
    """The multi-row upsert, without RETURNING; None while only deletions are queued."""
    requires: tuple[str, ...] = ()
    rows: dict[Hashable, tuple[tuple[int, ...], dict[str, Any]]] = field(default_factory=dict)
    """Key → (version, the row's values)."""
    deletions: dict[str, tuple[StatementOf, list[dict[str, Any]]]] = field(default_factory=dict)
    """Each deletion by key, by name, with the parameters of every time it was queued."""


class WriteQueue:
    """The rows and deletions queued per table."""

    def __init__(self) -> None:
        self._tables: dict[str, _TableQueue] = {}

    def add_row(
        self,
        table: str,
        key: Hashable,
        version: tuple[int, ...] | None,
        values: dict[str, Any],
        upsert: StatementOf,
        requires: tuple[str, ...] = (),
    ) -> bool:
        """Queue a row; returns whether it was queued: not if the row queued under ``key`` is
        as new or newer, which the database would keep. A ``version`` of None replaces
        whatever is queued under ``key`` (the row is merged with it already)."""
        queue = self._table(table)
        queue.upsert = upsert
        queue.requires = requires
        queued = queue.rows.get(key)
        if queued is not None and version is not None and queued[0] >= version:
            return False
        queue.rows[key] = (version or (), values)
        return True

    def add_deletion(
        self, table: str, name: str, statement: StatementOf, parameters: dict[str, Any]
    ) -> None:
        """Queue a deletion by key, to run after ``table``'s queued rows are written."""
        deletions = self._table(table).deletions
        deletions.setdefault(name, (statement, []))[1].append(parameters)

    def drop(self, table: str, matches: Callable[[dict[str, Any]], bool]) -> None:
        """Forget the queued rows of ``table`` that a deletion, about to run or be queued,
        would remove."""
        queue = self._tables.get(table)
        if queue is None:
            return
        for key in [key for key, (_, values) in queue.rows.items() if matches(values)]:
            del queue.rows[key]

    def write(self, connection: Connection, table: str) -> None:
        """Write ``table``'s queued rows, after those of the tables they reference, then run
        its queued deletions."""
        queue = self._tables.get(table)
        if queue is None:
            return
        for required in queue.requires:
            self.write(connection, required)
        if queue.rows and queue.upsert is not None:
            parameters = rows_parameters(connection, [values for _, values in queue.rows.values()])
            queue.rows.clear()
            connection.execute(queue.upsert(connection), parameters)
        deletions = list(queue.deletions.values())
        queue.deletions.clear()
        for statement, keys in deletions:
            run_deletions(connection, statement(connection), keys)

    def write_all(self, connection: Connection) -> None:
        for table in list(self._tables):
            self.write(connection, table)

    def _table(self, table: str) -> _TableQueue:
        queue = self._tables.get(table)
        if queue is None:
            queue = self._tables[table] = _TableQueue()
        return queue
