"""``clerk-sync changes tail|purge``: the change feed (``sync_changes``, docs/changes.md) for
people and scripts. The reading lives in ``models.changes``; this module parses and prints."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Final

import click
from sqlalchemy import Engine

from clerk_sync.cli.common import database, load_settings
from clerk_sync.cli.options import DURATION
from models.changes import Change, ChangeListener, changes_after, newest_change_id, purge_changes
from models.database import transaction

PAGE: Final = 500


@click.group()
def changes() -> None:
    """Read and purge the change feed (sync_changes): every insert, update and delete of the
    synced tables, in order."""


@changes.command("tail")
@click.option(
    "--since",
    "since",
    type=click.IntRange(min=0),
    default=None,
    help="Print the changes after this id (default: the last 10; with --follow, none).",
)
@click.option("--follow", "-f", is_flag=True, help="Keep printing changes as they are committed.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document per line, for scripts.")
@click.option("--table", "tables", multiple=True, help="Only changes to this table (repeatable).")
def tail_command(since: int | None, follow: bool, as_json: bool, tables: tuple[str, ...]) -> None:
    """Print changes, oldest first; with --follow, wait for more (PostgreSQL: LISTEN, woken at
    once; SQLite: polled twice a second). Stop with Ctrl-C."""
    settings = load_settings()
    only = tables or None
    with database(settings) as engine:
        position = since if since is not None else _default_start(engine, follow)
        if not follow:
            _print_all(engine, position, as_json, only)
            return
        with ChangeListener(engine) as listener:
            try:
                while True:
                    position = _print_all(engine, position, as_json, only)
                    listener.wait(30.0)
            except KeyboardInterrupt:
                return


def _default_start(engine: Engine, follow: bool) -> int:
    with transaction(engine) as connection:
        newest = newest_change_id(connection)
    return newest if follow else max(0, newest - 10)


def _print_all(engine: Engine, after: int, as_json: bool, tables: tuple[str, ...] | None) -> int:
    """Print every change after ``after``; returns the last id printed (or ``after``)."""
    while True:
        with transaction(engine) as connection:
            page = changes_after(connection, after, PAGE, tables=tables)
        for change in page:
            click.echo(json.dumps(change.as_message()) if as_json else _line(change))
            after = change.id
        if len(page) < PAGE:
            return after


def _line(change: Change) -> str:
    columns = ",".join(change.columns) if change.operation == "update" else ""
    return "\t".join(
        (
            str(change.id),
            change.changed_at.strftime("%Y-%m-%dT%H:%M:%S"),
            change.operation,
            change.table,
            change.entity_id,
            columns,
            change.source or "-",
        )
    )


@changes.command("purge")
@click.option(
    "--older-than",
    type=DURATION,
    required=True,
    help="Delete changes recorded longer ago than this (30d, 12h, ...).",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def purge_command(older_than: timedelta, yes: bool) -> None:
    """Delete old changes. A consumer whose position is older than what remains misses them:
    keep changes longer than any consumer may stop (CLERK_SYNC_CHANGES_RETENTION_DAYS purges
    on a schedule)."""
    if not yes:
        click.confirm(f"Delete the changes recorded more than {older_than} ago?", abort=True)
    settings = load_settings()
    with database(settings) as engine, transaction(engine) as connection:
        purged = purge_changes(connection, older_than)
    click.echo(f"Purged {purged} change(s)")
