"""Rows a batch of mutations read up front, in one query, instead of one query per mutation.

A batch holds the locks of every organization and user it touches before it reads anything
(``models.database.holding_locks``), and every writer of tombstones and memberships takes those
same locks: what the batch reads after taking them cannot change under it, except by its own
writes. So the batch reads the tombstones and membership holders its events will look up in one
query each, and the mutations consult that copy. A mutation that writes such rows either notes
what its statement returned (a tombstone, an organization's version) or forgets the copy's
entries it may have changed (a key, or every key that matches), and the next lookup of those
goes to the database again: the copy is never newer or older than what the transaction would
read. When a savepoint rolls a write back, the whole copy is forgotten. Outside a batch nothing
is remembered and every lookup queries, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final

from sqlalchemy import Connection, Row, Select, TextClause

TOMBSTONES: Final = "clerk_sync.known_tombstones"
"""(entity_type, entity_id) → the tombstone, or None for "none"."""
HOLDERS: Final = "clerk_sync.known_holders"
"""(organization_id, user_id) → the memberships holding that pair, as (id, created_at)."""
ORGANIZATION_VERSIONS: Final = "clerk_sync.known_organization_versions"
"""organization id → an ``updated_at`` the row is known to hold at least (read up front, or
written by an earlier mutation of the batch): a snapshot no newer need not be written again."""
NAMES: Final = (TOMBSTONES, HOLDERS, ORGANIZATION_VERSIONS)


PAIRS_PER_QUERY: Final = 500


def rows_for_pairs(
    connection: Connection,
    pairs: Sequence[tuple[str, str]],
    postgresql: TextClause,
    portable: Select[Any],
) -> Iterator[Row[Any]]:
    """The rows of many two-part keys, a few hundred per query: on PostgreSQL ``postgresql``,
    which joins ``unnest(:firsts, :seconds)`` (the same statement text for every batch, parsed
    and planned once), elsewhere ``portable``, a tuple ``IN`` over the expanding ``:p_wanted``."""
    for start in range(0, len(pairs), PAIRS_PER_QUERY):
        chunk = pairs[start : start + PAIRS_PER_QUERY]
        if connection.dialect.name == "postgresql":
            parameters = {"firsts": [a for a, _ in chunk], "seconds": [b for _, b in chunk]}
            yield from connection.execute(postgresql, parameters)
        else:
            yield from connection.execute(portable, {"p_wanted": list(chunk)})


@contextmanager
def remembering(connection: Connection, name: str, rows: dict[Any, Any]) -> Iterator[None]:
    """Let lookups in this block answer from ``rows`` for the keys it holds."""
    connection.info[name] = rows
    try:
        yield
    finally:
        # ``info`` belongs to the pooled DBAPI connection and outlives the transaction.
        connection.info.pop(name, None)


MISSING: Final = object()
"""``recall``'s answer for a key the batch did not read: query the database."""


def recall(connection: Connection, name: str, key: Hashable) -> Any:
    """The remembered value for ``key``, or ``MISSING``."""
    rows = connection.info.get(name)
    if rows is None:
        return MISSING
    return rows.get(key, MISSING)


def note(connection: Connection, name: str, key: Hashable, value: Any) -> None:
    """Remember what a write just established, if this block remembers ``name``."""
    rows = connection.info.get(name)
    if rows is not None:
        rows[key] = value


def forget(connection: Connection, name: str, key: Hashable) -> None:
    """A write may have changed ``key``'s rows."""
    rows = connection.info.get(name)
    if rows is not None:
        rows.pop(key, None)


def forget_matching(connection: Connection, name: str, matches: Callable[[Any, Any], bool]) -> None:
    """A write may have changed the rows of every key that ``matches(key, value)``."""
    rows = connection.info.get(name)
    if rows is not None:
        for key in [key for key, value in rows.items() if matches(key, value)]:
            del rows[key]


def forget_everything(connection: Connection) -> None:
    """A savepoint rolled back: what its writes established is undone, so the batch forgets all
    it remembered (it is read again, from the database, as needed)."""
    for name in NAMES:
        rows = connection.info.get(name)
        if rows is not None:
            rows.clear()
