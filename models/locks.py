"""Locks that order the writes of concurrent transactions: per organization and per user (held
until the transaction ends), taken one by one by the mutation rules or all at once by a batch,
and a session lock for long jobs that must not run twice. PostgreSQL advisory locks; SQLite
needs none (``BEGIN IMMEDIATE`` holds its write lock)."""

from __future__ import annotations

from collections.abc import Container, Iterable, Iterator
from contextlib import contextmanager
from typing import Final

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


def lock_entity(connection: Connection, key: str, held: Container[str] = ()) -> None:
    """Serialise the writes of one entity that no organization lock covers (``entity_key``: a
    domain, whose deletion names no organization). Taken after any organization and user lock."""
    _advisory_lock(connection, key, held)


def entity_key(entity_type: str, entity_id: str) -> str:
    return f"{entity_type}:{entity_id}"


ROLES_KEY: Final = "roles"
ROLES_EXCLUSIVE_KEY: Final = "roles:exclusive"
"""Among the keys ``take_locks`` returns: the roles lock is held exclusively (or is not)."""
SHARED: Final = "shared"
EXCLUSIVE: Final = "exclusive"
"""The modes of the roles lock: a membership upsert reads the roles and permissions (shared), a
role or permission write changes them and the memberships they reach (exclusive)."""


def stronger(held: str | None, mode: str | None) -> str | None:
    """The mode covering both."""
    if EXCLUSIVE in (held, mode):
        return EXCLUSIVE
    return held or mode


def lock_roles(connection: Connection, mode: str, held: str | None = None) -> str | None:
    """Take the roles lock in ``mode`` unless ``held`` (the mode held already) covers it; returns
    the mode now held. Last in the global order (organizations, users, entities, roles), so a
    membership upsert takes it after its organization and user locks."""
    if connection.dialect.name == "postgresql" and stronger(held, mode) != held:
        function = "pg_advisory_xact_lock" if mode == EXCLUSIVE else "pg_advisory_xact_lock_shared"
        statement = text(f"SELECT {function}(hashtextextended(:key, 0))")
        connection.execute(statement, {"key": ROLES_KEY})
    return stronger(held, mode)


def try_lock_roles(connection: Connection, mode: str) -> bool:
    """``lock_roles`` without waiting: whether it was taken."""
    if connection.dialect.name != "postgresql":
        return True
    function = (
        "pg_try_advisory_xact_lock" if mode == EXCLUSIVE else "pg_try_advisory_xact_lock_shared"
    )
    statement = text(f"SELECT {function}(hashtextextended(:key, 0))")
    return bool(connection.execute(statement, {"key": ROLES_KEY}).scalar_one())


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
    entities: Iterable[str] = (),
    roles: str | None = None,
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
    Then the ``entities`` keys (``entity_key``), and last the roles lock in mode ``roles`` (its
    key ``ROLES_KEY`` among those returned).
    """
    if connection.dialect.name != "postgresql":
        return set(), set()
    kinds = [sorted(lock_keys(organization_ids, ())), sorted(lock_keys((), user_ids))]
    others = sorted({key for key in entities if "\x00" not in key})
    roles_keys = roles_lock_keys(roles)
    if wait:
        if kinds[0] or kinds[1]:
            connection.execute(LOCK_MANY, {"organization_keys": kinds[0], "user_keys": kinds[1]})
        if others:
            connection.execute(LOCK_MANY, {"organization_keys": others, "user_keys": []})
        if roles is not None:
            lock_roles(connection, roles)
        return {*kinds[0], *kinds[1], *others, *roles_keys}, set()
    keys = kinds[0] + kinds[1] + others
    busy = set(connection.execute(TRY_LOCK_MANY, {"keys": keys}).scalars()) if keys else set()
    held = set(keys) - busy
    if roles is not None:
        if try_lock_roles(connection, roles):
            held |= roles_keys
        elif roles == EXCLUSIVE and try_lock_roles(connection, SHARED):
            # Held shared: the membership upserts go ahead, the role writers wait their turn.
            held.add(ROLES_KEY)
            busy.add(ROLES_EXCLUSIVE_KEY)
        else:
            busy |= roles_keys
    return held, busy


def roles_mode_held(keys: Container[str]) -> str | None:
    """The mode of the roles lock that these held keys stand for, if any."""
    if ROLES_EXCLUSIVE_KEY in keys:
        return EXCLUSIVE
    return SHARED if ROLES_KEY in keys else None


def roles_lock_keys(mode: str | None) -> set[str]:
    """The keys standing for the roles lock in ``mode`` (``take_locks``' held or busy keys)."""
    if mode is None:
        return set()
    return {ROLES_KEY, ROLES_EXCLUSIVE_KEY} if mode == EXCLUSIVE else {ROLES_KEY}


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
