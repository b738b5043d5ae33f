"""Engines, transactions, and which database errors are worth retrying."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    create_engine,
    event,
    text,
)
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from models.statements import dump_json

log = logging.getLogger("clerk_sync.database")

SQLITE_BUSY_TIMEOUT_SECONDS = 30


def make_engine(
    url: str,
    *,
    lock_timeout_ms: int = 10_000,
    idle_in_transaction_timeout_ms: int = 0,
    application_name: str | None = None,
    **engine_options: Any,
) -> Engine:
    """Create an engine; no connection is opened until first use.

    SQLite transactions start with ``BEGIN IMMEDIATE`` so that concurrent writers queue on the
    database lock instead of failing when a read transaction is upgraded to a write. PostgreSQL
    sessions get a ``lock_timeout`` so a stuck lock surfaces as a retryable error, not a hang,
    and, given ``idle_in_transaction_timeout_ms``, are ended when their client stops talking in
    the middle of a transaction, so the locks it holds do not outlive it: by the server, and,
    given ``application_name`` too, by ``end_stalled_lock_holders`` on a lock timeout.
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
        if idle_in_transaction_timeout_ms:
            connect_args["options"] += (
                f" -c idle_in_transaction_session_timeout={idle_in_transaction_timeout_ms}"
            )
        connect_args["connect_timeout"] = 10
        if application_name:
            connect_args["application_name"] = application_name
    engine = create_engine(
        url,
        pool_pre_ping=True,
        hide_parameters=True,
        json_serializer=dump_json,
        connect_args=connect_args,
        **engine_options,
    )
    if url.startswith("postgresql") and application_name and idle_in_transaction_timeout_ms:
        _end_stalled_lock_holders_on_lock_timeout(
            engine, application_name, idle_in_transaction_timeout_ms
        )
    return engine


LOCK_NOT_AVAILABLE = "55P03"
"""SQLSTATE of a lock wait that ran out of ``lock_timeout``."""

STALLED_LOCK_HOLDERS = text(
    "SELECT pid, pg_terminate_backend(pid) AS ended FROM pg_stat_activity AS activity "
    "WHERE datname = current_database() AND application_name = :application_name "
    "AND pid <> pg_backend_pid() AND xact_start IS NOT NULL AND wait_event = 'ClientRead' "
    "AND state_change < clock_timestamp() - make_interval(secs => :stalled_after_seconds) "
    "AND EXISTS (SELECT FROM pg_locks WHERE pg_locks.pid = activity.pid "
    "AND locktype = 'advisory' AND granted)"
)


def end_stalled_lock_holders(
    engine: Engine, application_name: str, stalled_after_ms: int
) -> list[int]:
    """End the sessions of ``application_name`` that hold advisory locks in a transaction and
    have waited for their client for ``stalled_after_ms``; returns their process ids.

    ``idle_in_transaction_session_timeout`` covers a client that stops between statements, but
    PostgreSQL (before 17's ``transaction_timeout``) has no timeout for one that stops in the
    middle of a pipeline, which is how psycopg sends an ``executemany``: a paused container
    or a frozen process then holds its organizations' locks for good. Only sessions named
    ``application_name`` (this service's own) are ended, on the same rule the server applies."""
    with engine.begin() as connection:
        rows = connection.execute(
            STALLED_LOCK_HOLDERS,
            {
                "application_name": application_name,
                "stalled_after_seconds": stalled_after_ms / 1000,
            },
        ).all()
    return [int(row.pid) for row in rows if row.ended]


def _end_stalled_lock_holders_on_lock_timeout(
    engine: Engine, application_name: str, stalled_after_ms: int
) -> None:
    """After a lock wait times out, end the stalled sessions that may hold the lock (at most
    once a second per engine: each waiter of a contended lock times out on its own)."""
    last_check = -1.0

    @event.listens_for(engine, "handle_error")
    def _on_error(context: Any) -> None:
        nonlocal last_check
        if getattr(context.original_exception, "sqlstate", None) != LOCK_NOT_AVAILABLE:
            return
        now = time.monotonic()
        if now - last_check < 1.0:
            return
        last_check = now
        try:
            ended = end_stalled_lock_holders(engine, application_name, stalled_after_ms)
        except SQLAlchemyError as error:
            log.warning("stalled lock holders not checked", extra={"error": type(error).__name__})
            return
        if ended:
            log.warning(
                "ended database sessions stalled in a transaction while holding locks",
                extra={"pids": ended, "stalled_after_ms": stalled_after_ms},
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


def is_transient(error: BaseException) -> bool:
    """Errors worth retrying: lost connections, lock timeouts, deadlocks, serialization failures,
    an exhausted pool. Integrity and programming errors are not: retrying cannot fix them."""
    if isinstance(error, OperationalError | InterfaceError | PoolTimeoutError):
        return True
    return isinstance(error, DBAPIError) and error.connection_invalidated
