"""Engines and the per-event transaction: the only place that knows dialect differences."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Connection, Engine, Table, create_engine, event, func, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

SQLITE_BUSY_TIMEOUT_SECONDS = 30


def make_engine(url: str, *, lock_timeout_ms: int = 10_000, **engine_options: Any) -> Engine:
    """Create an engine; no connection is opened until first use.

    SQLite transactions start with ``BEGIN IMMEDIATE`` so that concurrent writers queue on the
    database lock instead of failing when a read transaction is upgraded to a write. PostgreSQL
    sessions get a ``lock_timeout`` so a stuck lock surfaces as a retryable error, not a hang.
    Statement parameters are kept out of error messages: they hold names and email addresses,
    and errors end up in logs.
    """
    if url.startswith("sqlite"):
        engine = create_engine(
            url,
            hide_parameters=True,
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS},
            **engine_options,
        )
        _use_immediate_transactions(engine)
        return engine
    connect_args: dict[str, Any] = {}
    if url.startswith("postgresql"):
        connect_args["options"] = f"-c lock_timeout={lock_timeout_ms}"
        connect_args["connect_timeout"] = 10
    return create_engine(
        url,
        pool_pre_ping=True,
        hide_parameters=True,
        connect_args=connect_args,
        **engine_options,
    )


def _use_immediate_transactions(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """One atomic unit: commits on success, rolls back on any exception."""
    with engine.begin() as connection:
        yield connection


def lock_organization(connection: Connection, organization_id: str) -> None:
    """Serialise every write that touches one organization and its members.

    PostgreSQL takes a transaction-scoped advisory lock on the organization id, so concurrent
    workers cannot interleave the read-compare-write steps of the version and tombstone rules.
    SQLite needs nothing: ``BEGIN IMMEDIATE`` already holds the database write lock.
    """
    _advisory_lock(connection, f"organization:{organization_id}")


def lock_user(connection: Connection, user_id: str) -> None:
    """Serialise the writes that touch one user's memberships across organizations.

    ``user.deleted`` takes it alone; a membership upsert takes it after its organization lock
    (always in that order, so the two cannot deadlock), which makes "is the user tombstoned?"
    and "insert the membership" one step with respect to the user's deletion.
    """
    _advisory_lock(connection, f"user:{user_id}")


def _advisory_lock(connection: Connection, key: str) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": key}
        )


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


def insert_for(connection: Connection, table: Table) -> Any:
    """The dialect's INSERT, which offers ``on_conflict_do_update``/``do_nothing``."""
    if connection.dialect.name == "postgresql":
        return postgresql.insert(table)
    if connection.dialect.name == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"unsupported database dialect: {connection.dialect.name}")


def is_transient(error: BaseException) -> bool:
    """Errors worth retrying: lost connections, lock timeouts, deadlocks, serialization failures,
    an exhausted pool. Integrity and programming errors are not: retrying cannot fix them."""
    if isinstance(error, OperationalError | InterfaceError | PoolTimeoutError):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated


def greatest(connection: Connection, left: Any, right: Any) -> Any:
    """SQL ``GREATEST`` ignoring NULLs, on both dialects (SQLite's ``max`` returns NULL)."""
    if connection.dialect.name == "sqlite":
        return func.max(func.coalesce(left, right), func.coalesce(right, left))
    return func.greatest(left, right)


def least(connection: Connection, left: Any, right: Any) -> Any:
    """SQL ``LEAST`` ignoring NULLs, on both dialects."""
    if connection.dialect.name == "sqlite":
        return func.min(func.coalesce(left, right), func.coalesce(right, left))
    return func.least(left, right)
