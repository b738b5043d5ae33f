"""Statements built once per process and dialect, and the INSERTs every upsert is made of:
one row from bound parameters, or many rows from one JSON document (PostgreSQL)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, Final

import orjson
from sqlalchemy import Connection, Table, Text, bindparam, cast, column, func, select
from sqlalchemy.dialects import postgresql, sqlite

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
