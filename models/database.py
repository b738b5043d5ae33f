"""Engines and the per-event transaction: the only place that knows dialect differences."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Final

import orjson
from sqlalchemy import (
    Connection,
    Engine,
    Table,
    Text,
    bindparam,
    cast,
    column,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

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


HELD_LOCKS = "clerk_sync.held_locks"
"""``Connection.info`` key: lock keys this connection's transaction already holds."""


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


@contextmanager
def holding_locks(
    connection: Connection,
    organization_ids: Iterable[str],
    user_ids: Iterable[str],
    *,
    wait: bool = True,
) -> Iterator[set[str]]:
    """Take, up front, every lock that a batch of mutations will take one by one, and let the
    mutations inside the block skip taking them again. Yields the keys (``lock_keys``) whose
    locks are *not* held: none when waiting.

    The locks are the same as ``lock_organization``'s and ``lock_user``'s, in one global order:
    organizations before users, as every single mutation takes them, and within each kind by
    lock id. Transactions that lock several organizations this way wait for each other instead
    of deadlocking, whatever order their events come in. Without ``wait``, only the free locks
    are taken (a try-lock never waits, so it cannot deadlock either), and the caller leaves
    alone the mutations whose locks another transaction holds. They are transaction-level locks
    taken outside any savepoint: held until the transaction ends, whatever savepoints roll back.
    Use it in the transaction, and run nothing after the block that relies on the skipped locks.
    """
    if connection.dialect.name != "postgresql":
        yield set()
        return
    kinds = [sorted(lock_keys(organization_ids, ())), sorted(lock_keys((), user_ids))]
    held: set[str] = set()
    busy: set[str] = set()
    if wait:
        if kinds[0] or kinds[1]:
            connection.execute(LOCK_MANY, {"organization_keys": kinds[0], "user_keys": kinds[1]})
            held.update(kinds[0], kinds[1])
    else:
        keys = kinds[0] + kinds[1]
        if keys:
            busy = set(connection.execute(TRY_LOCK_MANY, {"keys": keys}).scalars())
            held = set(keys) - busy
    connection.info[HELD_LOCKS] = held
    try:
        yield busy
    finally:
        # ``info`` belongs to the pooled DBAPI connection and outlives the transaction.
        connection.info.pop(HELD_LOCKS, None)


_LOCK_ONE = text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")


def _advisory_lock(connection: Connection, key: str) -> None:
    if connection.dialect.name == "postgresql":
        held = connection.info.get(HELD_LOCKS)
        if held is not None and key in held:
            return
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


_STATEMENTS: dict[tuple[str, str], Any] = {}


def cached_statement(connection: Connection, name: str, build: Callable[[Connection], Any]) -> Any:
    """The statement ``build`` makes for this connection's dialect, built once per process and
    reused with parameters (``bind_parameters``/``bound``): building an ``ON CONFLICT`` upsert
    and working out its cache key costs more Python time than running it."""
    key = (connection.dialect.name, name)
    statement = _STATEMENTS.get(key)
    if statement is None:
        statement = _STATEMENTS[key] = build(connection)
    return statement


def bind_parameters(table: Table, names: Iterable[str]) -> dict[str, Any]:
    """``{column: bindparam}`` for an INSERT's values, typed like the columns."""
    return {name: bindparam(f"p_{name}", type_=table.c[name].type) for name in names}


def bound(values: dict[str, Any]) -> dict[str, Any]:
    """Values for a statement built with ``bind_parameters``."""
    return {f"p_{name}": value for name, value in values.items()}


def insert_row(connection: Connection, table: Table, names: Iterable[str]) -> Any:
    """The dialect's INSERT of one row of ``names``, from ``bound`` values."""
    return insert_for(connection, table).values(bind_parameters(table, names))


ROWS_PARAMETER: Final = "p_rows"


def insert_rows(connection: Connection, table: Table, names: Sequence[str]) -> Any:
    """The dialect's INSERT of many rows of ``names``, run with ``rows_parameters``.

    PostgreSQL: every row in one statement, from one JSON document that ``json_to_recordset``
    unpacks into typed columns, in the document's order. Executed once per row instead (psycopg
    pipelines those), the same rows cost the worker about six times as much CPU, and the server
    40% more (measured on 100-membership batches). SQLite: ``insert_row``, executed once per
    row."""
    if connection.dialect.name != "postgresql":
        return insert_row(connection, table, names)
    document = cast(bindparam(ROWS_PARAMETER, type_=Text()), postgresql.JSON())
    incoming = (
        func.json_to_recordset(document)
        .table_valued(*(column(name, table.c[name].type) for name in names))
        .render_derived(name="incoming", with_types=True)
    )
    return insert_for(connection, table).from_select(
        list(names), select(*(incoming.c[name] for name in names))
    )


def rows_parameters(connection: Connection, rows: Sequence[dict[str, Any]]) -> Any:
    """The parameters of an ``insert_rows`` statement for these rows (``{column: value}``)."""
    if connection.dialect.name != "postgresql":
        return [bound(values) for values in rows]
    return {ROWS_PARAMETER: dump_json(rows)}


def dump_json(value: Any) -> str:
    """JSON text for PostgreSQL, of a JSON column's document (the engine's serializer) or of
    ``insert_rows``' rows: orjson's, several times faster than ``json.dumps``, whose text it
    falls back to where orjson refuses (integers beyond 64 bits, keys that are not strings).
    Dates are written in ISO 8601. orjson writes a NaN or an infinity (not JSON; Clerk never
    sends one) as ``null``, where PostgreSQL refuses ``json.dumps``'s ``NaN``."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value, default=_iso_datetime)


def _iso_datetime(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


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
