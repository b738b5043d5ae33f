"""``clerk-sync rebuild``: the synced tables re-made from the stored events (the work is in
``workers.rebuild``; this module asks, shows progress and prints)."""

from __future__ import annotations

from typing import Final

import click

from clerk_sync.cli.common import database, load_settings, progress
from clerk_sync.cli.formatting import error_summary
from models.database import transaction
from models.events import APPLIED
from models.inbox import EventFilter, count_events, synced_table_sizes

REBUILD_BATCH: Final = 200


@click.command("rebuild")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=REBUILD_BATCH,
    show_default=True,
    help="Events re-applied per transaction.",
)
def rebuild_command(yes: bool, batch_size: int) -> None:
    """Empty organizations, memberships and their tombstones; re-apply every applied event.

    The stored events go through the same handlers and mutation rules as live deliveries, in
    the order they were received (any order converges). Dead letters and events still in
    flight are not part of it (replay those). Events deleted by ``events purge`` are lost to
    it: after a purge the rebuilt tables may be incomplete. Readers see the tables fill up
    again while it runs; live traffic may continue.
    """
    from workers.rebuild import rebuild

    settings = load_settings()
    with database(settings) as engine:
        with transaction(engine) as connection:
            total = count_events(connection, EventFilter(statuses=(APPLIED,)))
            sizes = synced_table_sizes(connection)
        if not yes:
            click.confirm(
                f"This empties organizations ({sizes['organizations']} rows), "
                f"organization_memberships ({sizes['organization_memberships']}) and tombstones "
                f"({sizes['tombstones']}), then re-applies {total} stored event(s). Continue?",
                abort=True,
            )
        with progress(total, "Rebuilding") as advance:
            result = rebuild(settings, engine, batch_size, advance)
        with transaction(engine) as connection:
            sizes = synced_table_sizes(connection)
    click.echo(
        f"Rebuilt from {result.reapplied} event(s): {sizes['organizations']} organization(s), "
        f"{sizes['organization_memberships']} membership(s), {sizes['tombstones']} tombstone(s)"
    )
    if result.failures:
        for svix_id, error in result.failures:
            click.echo(f"{svix_id}: {error_summary(error)}", err=True)
        raise click.ClickException(
            f"{len(result.failures)} event(s) could not be re-applied (see above; "
            "clerk-sync events show SVIX_ID)"
        )
