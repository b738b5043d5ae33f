"""Locks that order the writes of concurrent transactions: per organization and per user (held
until the transaction ends), taken one by one by the mutation rules or all at once by a batch,
and a session lock for long jobs that must not run twice. PostgreSQL advisory locks; SQLite
needs none (``BEGIN IMMEDIATE`` holds its write lock)."""

from __future__ import annotations

from collections.abc import Container, Iterable, Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, text


def lock_organization(
    connection: Connection, organization_id: str, held: Container[str] = ()
) -> None:
    """Serialise every write that touches one organization and its members.

    PostgreSQL takes a transaction-scoped advisory lock on the organization id, so concurrent
    workers cannot interleave the read-compare-write steps of the version and tombstone rules.
    SQLite needs nothing: ``BEGIN IMMEDIATE`` already holds the database write lock.
    """
    _advisory_lock(connection, f"organization:{organization_id}", held)


def lock_user(connection: Connection, user_id: str, held: Container[str] = ()) -> None:
    """Serialise the writes that touch one user's memberships across organizations.

    ``user.deleted`` takes it alone; a membership upsert takes it after its organization lock
    (always in that order, so the two cannot deadlock), which makes "is the user tombstoned?"
    and "insert the membership" one step with respect to the user's deletion.
    """
    _advisory_lock(connection, f"user:{user_id}", held)


LOCK_MANY = text(
    "SELECT count(pg_advisory_xact_lock(lock_id)) FROM unnest(array_cat("
    "(SELECT array_agg(DISTINCT hashtextextended(key, 0) ORDER BY hashtextextended(key, 0)) "
    "FROM unnest(CAST(:organization_keys AS text[])) AS key), "
    "(SELECT array_agg(DISTINCT hashtextextended(key, 0) ORDER BY hashtextextended(key, 0)) "
    "FROM unnest(CAST(:user_keys AS text[])) AS key))) AS lock_id"
)
"""Take the advisory locks of many organization keys, then of many user keys, each kind in
ascending order of lock id, in one round trip: the inner queries sort each kind's ids into an
array, the outer one locks them one by one in the order of the two arrays joined."""


TRY_LOCK_MANY = text(
    "SELECT key FROM unnest(CAST(:keys AS text[])) AS key "
    "WHERE NOT pg_try_advisory_xact_lock(hashtextextended(key, 0))"
)
"""Take whichever of these keys' advisory locks are free, without waiting; returns the others."""


def lock_keys(organization_ids: Iterable[str], user_ids: Iterable[str]) -> set[str]:
    """The advisory lock keys of ``lock_organization`` and ``lock_user`` for these ids (ids that
    PostgreSQL text cannot hold, with NUL, are left out: their mutation fails on its own)."""
    return {f"organization:{value}" for value in organization_ids if "\x00" not in value} | {
        f"user:{value}" for value in user_ids if "\x00" not in value
    }


def take_locks(
    connection: Connection,
    organization_ids: Iterable[str],
    user_ids: Iterable[str],
    *,
    wait: bool = True,
) -> tuple[set[str], set[str]]:
    """Take, up front, every lock that a batch of mutations will take one by one; returns the
    keys (``lock_keys``) now held, which the mutations then skip (``lock_organization``'s
    ``held``), and those *not* held: none when waiting.

    The locks are the same as ``lock_organization``'s and ``lock_user``'s, in one global order:
    organizations before users, as every single mutation takes them, and within each kind by
    lock id. Transactions that lock several organizations this way wait for each other instead
    of deadlocking, whatever order their events come in. Without ``wait``, only the free locks
    are taken (a try-lock never waits, so it cannot deadlock either), and the caller leaves
    alone the mutations whose locks another transaction holds. They are transaction-level locks
    taken outside any savepoint: held until the transaction ends, whatever savepoints roll back.
    """
    if connection.dialect.name != "postgresql":
        return set(), set()
    kinds = [sorted(lock_keys(organization_ids, ())), sorted(lock_keys((), user_ids))]
    if wait:
        if kinds[0] or kinds[1]:
            connection.execute(LOCK_MANY, {"organization_keys": kinds[0], "user_keys": kinds[1]})
        return {*kinds[0], *kinds[1]}, set()
    keys = kinds[0] + kinds[1]
    if not keys:
        return set(), set()
    busy = set(connection.execute(TRY_LOCK_MANY, {"keys": keys}).scalars())
    return set(keys) - busy, busy


_LOCK_ONE = text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")


def _advisory_lock(connection: Connection, key: str, held: Container[str]) -> None:
    if connection.dialect.name == "postgresql" and key not in held:
        connection.execute(_LOCK_ONE, {"key": key})


class LockBusyError(RuntimeError):
    """Another session holds the lock ``hold_session_lock`` tried to take."""


@contextmanager
def hold_session_lock(engine: Engine, key: str) -> Iterator[None]:
    """Hold a PostgreSQL session-level advisory lock named ``key`` for the duration, on a
    connection of its own (autocommit: no transaction stays open); ``LockBusyError`` at once if
    another session holds it. For long jobs that must not run twice at the same time. SQLite has
    no such lock: nothing is taken there."""
    if engine.dialect.name != "postgresql":
        yield
        return
    with engine.connect() as connection:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        parameters = {"key": key}
        taken = connection.execute(
            text("SELECT pg_try_advisory_lock(hashtextextended(:key, 0))"), parameters
        ).scalar_one()
        if not taken:
            raise LockBusyError(key)
        try:
            yield
        finally:
            connection.execute(
                text("SELECT pg_advisory_unlock(hashtextextended(:key, 0))"), parameters
            )
