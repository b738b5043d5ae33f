"""``clerk-sync events list|show|replay|purge|partitions``: the stored webhook events (the inbox).

The queries live in ``models.inbox`` and the replay in ``workers.replay`` (imported when
needed: the command line starts without Celery); this module parses options and prints.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

import click

from clerk_sync.cli.common import database, load_settings, progress
from clerk_sync.cli.formatting import event_json, event_table, event_time, iso, pretty_payload
from clerk_sync.cli.options import DURATION, build_filter, filter_options
from clerk_sync.core.settings import SettingsError
from models.database import transaction
from models.events import DEAD
from models.inbox import PURGEABLE, count_purgeable, get_event, list_events, purge_events
from models.partitions import MONTHS_AHEAD, ensure_partitions, is_partitioned, partitions
from models.redaction import count_about

LIST_LIMIT: Final = 50
REPLAY_BATCH: Final = 100
REPLAY_CONFIRM_ABOVE: Final = 100
"""A replay of more events than this asks first (unless --yes): a filter broader than meant
would make the workers apply every matching event again."""


@click.group()
def events() -> None:
    """Inspect, replay and purge the stored webhook events (the inbox)."""


@events.command("list")
@filter_options
@click.option(
    "--limit",
    type=click.IntRange(min=0),
    default=LIST_LIMIT,
    show_default=True,
    help="At most this many, newest first (0: no limit).",
)
@click.option("--json", "as_json", is_flag=True, help="A JSON array, for scripts.")
def list_command(
    statuses: tuple[str, ...],
    event_types: tuple[str, ...],
    since: datetime | None,
    until: datetime | None,
    time_field: str,
    organization_id: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List stored events, newest received first."""
    event_filter = build_filter(
        statuses=statuses,
        event_types=event_types,
        since=since,
        until=until,
        time_field=time_field,
        organization_id=organization_id,
    )
    settings = load_settings()
    with database(settings) as engine, transaction(engine) as connection:
        found = list_events(connection, event_filter, limit=limit + 1 if limit else None)
    more = bool(limit) and len(found) > limit
    shown = found[:limit] if limit else found
    if as_json:
        click.echo(json.dumps([event_json(event) for event in shown], indent=2))
        return
    if not shown:
        click.echo("No events match.")
        return
    click.echo(event_table(shown))
    if more:
        click.echo(f"(first {limit} shown; more match: narrow the filters or raise --limit)")
    else:
        click.echo(f"({len(shown)} event{'' if len(shown) == 1 else 's'})")


@events.command("show")
@click.argument("svix_id")
@click.option("--json", "as_json", is_flag=True, help="JSON, payload included as stored.")
def show_command(svix_id: str, as_json: bool) -> None:
    """Show one event: status, attempts, replays, last error with traceback, payload."""
    settings = load_settings()
    with database(settings) as engine, transaction(engine) as connection:
        event = get_event(connection, svix_id)
    if event is None:
        raise click.ClickException(f"no event with svix id {svix_id!r}")
    if as_json:
        click.echo(json.dumps(event_json(event, with_payload=True), indent=2))
        return
    replays = str(event.replay_count)
    if event.last_replayed_at is not None:
        replays += f" (last {iso(event.last_replayed_at)})"
    moment = event_time(event)
    fields = [
        ("svix id", event.svix_id),
        ("type", event.event_type or "-"),
        ("status", event.status),
        ("organization", event.organization_id or "-"),
        ("attempts", str(event.attempts)),
        ("replays", replays),
        (
            "event time",
            "-" if event.event_timestamp is None else f"{iso(moment)} ({event.event_timestamp})",
        ),
        ("received at", iso(event.received_at) or "-"),
        ("processed at", iso(event.processed_at) or "-"),
    ]
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        click.echo(f"{name.ljust(width)}  {value}")
    if event.last_error:
        click.echo("\nlast error:")
        click.echo(event.last_error.rstrip())
    click.echo("\npayload:")
    click.echo(pretty_payload(event.payload))


@events.command("replay")
@click.argument("svix_ids", nargs=-1)
@filter_options
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=REPLAY_BATCH,
    show_default=True,
    help="Events locked, published and recorded per transaction.",
)
@click.option("--dry-run", is_flag=True, help="Show what would be replayed; change nothing.")
@click.option(
    "--yes",
    is_flag=True,
    help=f"Do not ask for confirmation (asked above {REPLAY_CONFIRM_ABOVE} events).",
)
def replay_command(
    svix_ids: tuple[str, ...],
    statuses: tuple[str, ...],
    event_types: tuple[str, ...],
    since: datetime | None,
    until: datetime | None,
    time_field: str,
    organization_id: str | None,
    batch_size: int,
    dry_run: bool,
    yes: bool,
) -> None:
    """Re-enqueue stored events (by SVIX_ID, or by filter) through the worker's task.

    Each replayed event is set back to ``received``, its replay recorded (``replay_count``,
    ``last_replayed_at``), and its stored payload published again; the worker applies it like
    any delivery. Safe to repeat and safe under live traffic: applying an event twice, or in any
    order, converges. Example: ``clerk-sync events replay --status dead``.
    """
    event_filter = build_filter(
        svix_ids=svix_ids,
        statuses=statuses,
        event_types=event_types,
        since=since,
        until=until,
        time_field=time_field,
        organization_id=organization_id,
    )
    if event_filter.is_empty:
        raise click.UsageError("give event ids or a filter (for example --status dead)")
    from workers.replay import events_to_replay, missing_ids, replay

    settings = load_settings()
    with database(settings) as engine:
        if dry_run:
            with transaction(engine) as connection:
                found = list_events(connection, event_filter, limit=None, newest_first=False)
            if found:
                click.echo(event_table(found))
            click.echo(f"Would replay {len(found)} event{'' if len(found) == 1 else 's'}")
            _report_missing(missing_ids(event_filter.svix_ids, {event.svix_id for event in found}))
            return
        try:
            settings.require_message_secrets()
        except SettingsError as error:
            raise click.ClickException(str(error)) from None
        work = events_to_replay(engine, event_filter)
        if len(work) > REPLAY_CONFIRM_ABOVE and not yes:
            click.confirm(
                f"Replay {len(work)} events? Each is applied again (harmless, but the workers "
                "spend the time); see them first with --dry-run",
                abort=True,
            )
        with progress(len(work), "Replaying") as advance:
            result = replay(settings, engine, event_filter, work, batch_size, advance)
    _report_missing(result.missing)
    click.echo(f"Replayed {result.replayed} of {result.matched}")
    if result.error is not None:
        raise click.ClickException(
            f"the broker is unavailable ({result.error}): stopped after {result.replayed}; "
            "run again to replay the rest"
        )


def _report_missing(missing: Sequence[str]) -> None:
    for svix_id in missing:
        click.echo(f"{svix_id}: no such event (or it does not match the filters)", err=True)


@events.command("purge")
@click.option(
    "--older-than",
    type=DURATION,
    required=True,
    help="Delete events received longer ago than this (30d, 12h, ...).",
)
@click.option("--include-dead", is_flag=True, help="Also delete dead letters (kept by default).")
@click.option("--dry-run", is_flag=True, help="Count what would be deleted; delete nothing.")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def purge_command(older_than: timedelta, include_dead: bool, dry_run: bool, yes: bool) -> None:
    """Delete old applied and skipped events from the inbox.

    Dead letters stay unless --include-dead; events still being processed are never deleted;
    events replayed within the period are kept. On PostgreSQL a month wholly older than the
    cutoff holding nothing else is dropped as a partition; the rest is deleted row by row.
    A purged event is gone from the log that ``rebuild`` re-applies: keep events as long as
    you may want to rebuild from them.
    """
    statuses = (*PURGEABLE, DEAD) if include_dead else PURGEABLE
    cutoff = datetime.now(UTC) - older_than
    described = f"{', '.join(statuses)} event(s) received before {iso(cutoff)}"
    settings = load_settings()
    with database(settings) as engine:
        with transaction(engine) as connection:
            count = count_purgeable(connection, cutoff, statuses)
        if dry_run or count == 0:
            click.echo(f"Would purge {count} {described}" if dry_run else "Nothing to purge.")
            return
        if not yes:
            click.confirm(
                f"Delete {count} {described}? rebuild cannot re-apply deleted events",
                abort=True,
            )
        purged = purge_events(engine, cutoff, statuses)
    click.echo(f"Purged {purged} {described}")


@events.command("partitions")
@click.option(
    "--months-ahead",
    type=click.IntRange(min=0, max=24),
    default=MONTHS_AHEAD,
    show_default=True,
    help="Create the partitions of the current month and this many after it.",
)
def partitions_command(months_ahead: int) -> None:
    """Create the inbox's monthly partitions ahead of time and list them (PostgreSQL).

    Beat does this every few hours; running it again creates nothing twice. On SQLite the
    inbox is one table and there is nothing to do.
    """
    settings = load_settings()
    with database(settings) as engine, transaction(engine) as connection:
        if not is_partitioned(connection):
            click.echo("The inbox is not partitioned (SQLite, or before migration 0009).")
            return
        created = ensure_partitions(connection, datetime.now(UTC), months_ahead)
        found = partitions(connection)
    for name in created:
        click.echo(f"created {name}")
    for partition in found:
        click.echo(f"{partition.name}  {iso(partition.start)} .. {iso(partition.end)}")
    click.echo(f"({len(found)} monthly partitions, and the default one)")


@events.command("redact")
@click.option("--user", "user_id", required=True, help="The Clerk user id (user_...).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def redact_command(user_id: str, yes: bool) -> None:
    """Erase a user's personal data from the stored events about them.

    Their user events and the membership events naming them keep ids and times but lose
    names, email addresses, phone numbers, pictures, metadata and the request's IP address and
    user agent; they still apply (rebuild converges to the same tables). Done by itself when
    ``user.deleted`` is applied (CLERK_SYNC_ERASE_ON_USER_DELETED); this is for a request to
    erase before, or with that setting off. It cannot be undone.
    """
    from workers.erasure import erase_user

    settings = load_settings()
    with database(settings) as engine:
        with transaction(engine) as connection:
            found = count_about(connection, user_id)
        if found == 0:
            click.echo(f"No stored event is about {user_id}.")
            return
        if not yes:
            click.confirm(
                f"Erase the personal data of {found} stored event(s) about {user_id}? "
                "This cannot be undone",
                abort=True,
            )
        with transaction(engine) as connection:
            erased = erase_user(connection, user_id)
    click.echo(f"Erased personal data from {erased} of {found} event(s) about {user_id}")
