"""``clerk-sync rebuild``: the synced tables re-made from the stored events (the work is in
``workers.rebuild``; this module asks, shows progress and prints)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import click

from clerk_sync.cli.common import database, load_settings, progress
from clerk_sync.cli.formatting import error_summary, table
from models.database import transaction
from models.events import APPLIED
from models.inbox import EventFilter, count_events
from models.locks import LockBusyError
from models.rebuilding import PreviousTablesKeptError, TableChange, row_counts

REBUILD_BATCH: Final = 200


@click.command("rebuild")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--dry-run", is_flag=True, help="Build the tables, show how they differ; keep the live ones."
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=REBUILD_BATCH,
    show_default=True,
    help="Events re-applied per transaction.",
)
def rebuild_command(yes: bool, dry_run: bool, batch_size: int) -> None:
    """Re-make organizations, memberships, users and tombstones from every applied event.

    The stored events go through the same handlers and mutation rules as live deliveries, in
    the order they were received (any order converges), into new tables that replace the live
    ones at once: readers see the old tables until then, never empty or half-filled ones.
    Live traffic may continue. Tombstones are kept and re-made. Dead letters and events still
    in flight are not part of it (replay those). Events deleted by ``events purge`` are lost
    to it: after a purge the rebuilt tables may be incomplete.
    """
    from workers.rebuild import rebuild

    settings = load_settings()
    with database(settings) as engine:
        with transaction(engine) as connection:
            total = count_events(connection, EventFilter(statuses=(APPLIED,)))
            sizes = row_counts(connection)
        if not yes and not dry_run:
            click.confirm(
                f"This replaces organizations ({sizes['organizations']} rows), "
                f"organization_memberships ({sizes['organization_memberships']}), users "
                f"({sizes['users']}) and tombstones ({sizes['tombstones']}) with tables re-made "
                f"from {total} stored event(s). Continue?",
                abort=True,
            )
        try:
            with progress(total, "Rebuilding") as advance:
                result = rebuild(settings, engine, batch_size, advance, dry_run=dry_run)
        except LockBusyError:
            raise click.ClickException("another rebuild is running") from None
        except PreviousTablesKeptError as kept:
            raise click.ClickException(str(kept)) from None
        with transaction(engine) as connection:
            sizes = row_counts(connection)
    if dry_run:
        click.echo(f"Would rebuild from {result.reapplied} event(s); the live tables are kept.")
        click.echo(_changes(result.changes))
    else:
        click.echo(
            f"Rebuilt from {result.reapplied} event(s): {sizes['organizations']} "
            f"organization(s), {sizes['organization_memberships']} membership(s), "
            f"{sizes['users']} user(s), {sizes['tombstones']} tombstone(s)"
        )
    if result.previous_kept:
        click.echo(
            "The replaced tables are kept in schema clerk_sync_previous: something (a view?) "
            "depends on them. Point it at the new tables, then drop that schema.",
            err=True,
        )
    if result.failures:
        for svix_id, error in result.failures:
            click.echo(f"{svix_id}: {error_summary(error)}", err=True)
        raise click.ClickException(
            f"{len(result.failures)} event(s) could not be re-applied (see above; "
            "clerk-sync events show SVIX_ID)"
        )


def _changes(changes: Sequence[TableChange]) -> str:
    """Table by table: rows now, rows after, and how many are added, removed, changed."""
    headers = ("table", "rows now", "rows after", "added", "removed", "changed")
    return table(
        headers,
        [
            (
                change.table,
                str(change.rows_before),
                str(change.rows_after),
                str(change.added),
                str(change.removed),
                str(change.changed),
            )
            for change in changes
        ],
    )
