"""Operator commands: ``clerk-sync events list|show|replay|purge``, ``rebuild`` and ``status``.

The queries live in ``models.inbox``; this module parses options, prints, and does the one thing
``models`` may not: hand replayed events to the broker (``clerk_sync.broker.publisher``, the
same task message and ledger the ingress uses). Stored payloads are trusted as they are: they were
verified when they arrived, and their signatures have long expired.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, TypeVar

import click
from sqlalchemy import Engine

from models.database import make_engine, transaction
from models.events import APPLIED, DEAD, SKIPPED
from models.inbox import (
    PURGEABLE,
    STATUSES,
    EventFilter,
    StoredEvent,
    count_events,
    count_purgeable,
    get_event,
    list_events,
    lock_for_replay,
    mark_replayed,
    matching_ids,
    purge_events,
    summarise,
)

if TYPE_CHECKING:
    from clerk_sync.core.settings import Settings

T = TypeVar("T")

REPLAY_BATCH: Final = 100
REBUILD_BATCH: Final = 200
LIST_LIMIT: Final = 50
ERROR_WIDTH: Final = 60

DURATION_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
DURATION_PATTERN: Final = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")


# -- option types ----------------------------------------------------------------------------


def parse_duration(text: str) -> timedelta | None:
    match = DURATION_PATTERN.match(text.lower())
    if match is None:
        return None
    return timedelta(seconds=int(match.group(1)) * DURATION_UNITS[match.group(2)])


class Duration(click.ParamType[timedelta, Any]):
    """``30d``, ``12h``, ``90m``, ``2w``, ``45s``."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> timedelta:
        if isinstance(value, timedelta):
            return value
        duration = parse_duration(str(value))
        if duration is None:
            self.fail(f"{value!r} is not a duration such as 30d, 12h, 90m, 2w or 45s", param, ctx)
        return duration


class Moment(click.ParamType[datetime, Any]):
    """An ISO 8601 date or time (UTC unless it says otherwise), Unix time in seconds or
    milliseconds, or a duration meaning that long ago (``2h``)."""

    name = "time"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        text = str(value).strip()
        duration = parse_duration(text)
        if duration is not None:
            return datetime.now(UTC) - duration
        if text.isdigit():
            number = int(text)
            return datetime.fromtimestamp(number / 1000 if number >= 10**12 else number, UTC)
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            self.fail(
                f"{value!r} is not a time: use ISO 8601 (2026-01-31, 2026-01-31T12:00:00Z), "
                "Unix time, or a duration ago (2h, 7d)",
                param,
                ctx,
            )
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


DURATION = Duration()
MOMENT = Moment()


def filter_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The filters shared by ``events list`` and ``events replay``."""
    options = [
        click.option(
            "--status",
            "statuses",
            multiple=True,
            type=click.Choice(STATUSES),
            help="Only events with this status (repeatable).",
        ),
        click.option(
            "--type",
            "event_types",
            multiple=True,
            metavar="TYPE",
            help="Only this event type, or a prefix ending in * (repeatable).",
        ),
        click.option("--since", type=MOMENT, help="From this time (ISO 8601, Unix, or 2h ago)."),
        click.option("--until", type=MOMENT, help="Before this time."),
        click.option(
            "--time-field",
            type=click.Choice(["received", "event"]),
            default="received",
            show_default=True,
            help="Which time --since/--until apply to: receipt, or the envelope's timestamp.",
        ),
        click.option("--org", "organization_id", metavar="ORG_ID", help="Only this organization."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def build_filter(
    *,
    statuses: Sequence[str] = (),
    event_types: Sequence[str] = (),
    since: datetime | None = None,
    until: datetime | None = None,
    time_field: str = "received",
    organization_id: str | None = None,
    svix_ids: Sequence[str] = (),
) -> EventFilter:
    return EventFilter(
        svix_ids=tuple(dict.fromkeys(svix_ids)),
        statuses=tuple(statuses),
        event_types=tuple(event_types),
        organization_id=organization_id or None,
        since=since,
        until=until,
        by_event_time=time_field == "event",
    )


# -- plumbing --------------------------------------------------------------------------------


def load_settings() -> Settings:
    from clerk_sync.cli.common import load_settings as load

    return load()


@contextmanager
def database(settings: Settings) -> Iterator[Engine]:
    engine = make_engine(settings.database_url, lock_timeout_ms=settings.db_lock_timeout_ms)
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def progress(length: int, label: str) -> Iterator[Callable[[int], None]]:
    """A click progress bar on a terminal (stderr, so stdout stays parseable); nothing else."""
    stream = sys.stderr
    if length > 0 and stream.isatty():
        with click.progressbar(length=length, label=label, file=stream) as bar:
            yield bar.update
    else:
        yield lambda _steps: None


def _retry_transient(function: Callable[..., T]) -> Callable[..., T]:
    """Retry a whole transaction on a transient database error, as the worker does."""
    from tenacity import retry, retry_if_exception, stop_after_attempt, wait_random_exponential

    from models.database import is_transient
    from workers.processing import IN_PROCESS_ATTEMPTS

    return retry(
        retry=retry_if_exception(is_transient),
        stop=stop_after_attempt(IN_PROCESS_ATTEMPTS),
        wait=wait_random_exponential(multiplier=0.1, max=2.0),
        reraise=True,
    )(function)


def chunks(items: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- formatting ------------------------------------------------------------------------------


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def short_time(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def event_time(event: StoredEvent) -> datetime | None:
    if event.event_timestamp is None:
        return None
    try:
        return datetime.fromtimestamp(event.event_timestamp / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def age(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "-"
    seconds = max(0, int((now - moment).total_seconds()))
    parts = []
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    if seconds or not parts:
        parts.append(f"{seconds}s")
    return " ".join(parts[:2])


def error_summary(error: str | None) -> str:
    """One line: the exception at the end of a traceback, else the message's first line."""
    if not error:
        return ""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    line = lines[-1] if lines[0].startswith("Traceback") else lines[0]
    return line if len(line) <= ERROR_WIDTH else line[: ERROR_WIDTH - 1] + "…"


def event_json(event: StoredEvent, *, with_payload: bool = False) -> dict[str, Any]:
    document: dict[str, Any] = {
        "svix_id": event.svix_id,
        "event_type": event.event_type,
        "status": event.status,
        "organization_id": event.organization_id,
        "attempts": event.attempts,
        "replay_count": event.replay_count,
        "last_replayed_at": iso(event.last_replayed_at),
        "event_timestamp": event.event_timestamp,
        "event_time": iso(event_time(event)),
        "received_at": iso(event.received_at),
        "processed_at": iso(event.processed_at),
        "last_error": event.last_error,
    }
    if with_payload:
        document["payload"] = event.payload
    return document


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [
        max([len(header), *(len(row[index]) for row in rows)])
        for index, header in enumerate(headers)
    ]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))

    return "\n".join(line(cells).rstrip() for cells in [headers, *rows])


EVENT_HEADERS: Final = (
    "RECEIVED (UTC)",
    "SVIX ID",
    "TYPE",
    "STATUS",
    "TRIES",
    "REPLAYS",
    "ORGANIZATION",
    "EVENT TIME (UTC)",
    "ERROR",
)


def event_table(events: Sequence[StoredEvent]) -> str:
    return table(
        EVENT_HEADERS,
        [
            (
                short_time(event.received_at),
                event.svix_id,
                event.event_type or "-",
                event.status,
                str(event.attempts),
                str(event.replay_count),
                event.organization_id or "-",
                short_time(event_time(event)),
                error_summary(event.last_error),
            )
            for event in events
        ],
    )


def pretty_payload(payload: str | None) -> str:
    if payload is None:
        return ""
    try:
        return json.dumps(json.loads(payload), indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):
        return payload


# -- events ----------------------------------------------------------------------------------


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
    settings = load_settings()
    with database(settings) as engine:
        if dry_run:
            with transaction(engine) as connection:
                found = list_events(connection, event_filter, limit=None, newest_first=False)
            if found:
                click.echo(event_table(found))
            click.echo(f"Would replay {len(found)} event{'' if len(found) == 1 else 's'}")
            _report_missing(event_filter.svix_ids, {event.svix_id for event in found})
            return
        replayed, total, error = replay(settings, engine, event_filter, batch_size)
    click.echo(f"Replayed {replayed} of {total}")
    if error is not None:
        raise click.ClickException(
            f"the broker is unavailable ({error}): stopped after {replayed}; run again to "
            "replay the rest"
        )


def replay(
    settings: Settings, engine: Engine, event_filter: EventFilter, batch_size: int
) -> tuple[int, int, str | None]:
    """Replay in batches; returns (replayed, matched, broker error that stopped it or None).

    Per batch, in one transaction: lock the rows that still match, then for each publish its
    stored payload and set it back to ``received`` with the replay recorded. The worker that
    takes a replayed message waits on the row lock until the commit, so it always sees the
    event as not finished and applies it. If the broker fails, the events published so far
    are committed as replayed and the rest keep their status. A transient database error
    (e.g. a lock wait beyond ``lock_timeout`` behind a busy worker) retries the batch; a copy
    published by the failed attempt is a harmless duplicate.
    """
    from clerk_sync.broker.publisher import Publisher
    from clerk_sync.core.queue import BrokerUnavailableError, QueuedEvent

    publisher = Publisher(settings)
    still_matches = replace(event_filter, svix_ids=())  # the batch names the ids

    @_retry_transient
    def replay_batch(batch: Sequence[str]) -> tuple[list[str], int, str | None]:
        replayed, error = 0, None
        with transaction(engine) as connection:
            locked = lock_for_replay(connection, batch, still_matches)
            now = datetime.now(UTC)
            for event in locked:
                assert event.payload is not None
                try:
                    publisher.publish(
                        QueuedEvent(event.svix_id, event.payload, event.received_at_ms)
                    )
                except BrokerUnavailableError as failure:
                    error = str(failure)
                    break
                mark_replayed(connection, event.svix_id, now)
                replayed += 1
        return [event.svix_id for event in locked], replayed, error

    with transaction(engine) as connection:
        work = list(event_filter.svix_ids) or matching_ids(connection, event_filter)
    replayed = 0
    found: set[str] = set()
    error: str | None = None
    with progress(len(work), "Replaying") as advance:
        for batch in chunks(work, batch_size):
            locked, count, error = replay_batch(batch)
            found.update(locked)
            replayed += count
            advance(len(batch))
            if error is not None:
                break
    if error is None:
        _report_missing(event_filter.svix_ids, found)
    return replayed, len(work), error


def _report_missing(requested: Sequence[str], found: set[str]) -> None:
    for svix_id in requested:
        if svix_id not in found:
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
    events replayed within the period are kept. A purged event is gone from the log that
    ``rebuild`` re-applies: keep events as long as you may want to rebuild from them.
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


# -- rebuild ---------------------------------------------------------------------------------


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
    from models.inbox import synced_table_sizes

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
        reapplied, failures = rebuild(settings, engine, total, batch_size)
        with transaction(engine) as connection:
            sizes = synced_table_sizes(connection)
    click.echo(
        f"Rebuilt from {reapplied} event(s): {sizes['organizations']} organization(s), "
        f"{sizes['organization_memberships']} membership(s), {sizes['tombstones']} tombstone(s)"
    )
    if failures:
        for svix_id, error in failures:
            click.echo(f"{svix_id}: {error_summary(error)}", err=True)
        raise click.ClickException(
            f"{len(failures)} event(s) could not be re-applied (see above; "
            "clerk-sync events show SVIX_ID)"
        )


def rebuild(
    settings: Settings, engine: Engine, total: int, batch_size: int
) -> tuple[int, list[tuple[str, str]]]:
    """Empty the synced tables, then re-apply the applied events page by page (a transaction
    per page, retried on transient errors). Returns how many were re-applied, and the events
    that failed with why."""
    from models.inbox import applied_events_after, empty_synced_tables
    from workers.processing import apply_payload, parse_payload, prepared

    @_retry_transient
    def page(after: tuple[datetime, str] | None) -> tuple[list[StoredEvent], list[tuple[str, str]]]:
        failed: list[tuple[str, str]] = []
        with transaction(engine) as connection:
            found = applied_events_after(connection, after, batch_size)
            documents = [parse_payload(event.payload or "") for event in found]
            # The page's locks up front, in the workers' global order: a page applied while
            # workers apply batches waits for them instead of deadlocking with them.
            with prepared(connection, documents):
                for event, document in zip(found, documents, strict=True):
                    assert event.payload is not None
                    outcome, error = apply_payload(
                        connection,
                        event.payload,
                        settings.workspace_metadata_key,
                        document=document,
                    )
                    if outcome not in (APPLIED, SKIPPED):
                        failed.append((event.svix_id, error or outcome))
        return found, failed

    @_retry_transient
    def empty() -> None:
        with transaction(engine) as connection:
            empty_synced_tables(connection)

    empty()
    reapplied = 0
    failures: list[tuple[str, str]] = []
    after: tuple[datetime, str] | None = None
    with progress(total, "Rebuilding") as advance:
        while True:
            found, failed = page(after)
            if not found:
                break
            reapplied += len(found) - len(failed)
            failures.extend(failed)
            advance(len(found))
            after = (found[-1].received_at, found[-1].svix_id)
    return reapplied, failures


# -- status ----------------------------------------------------------------------------------


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="JSON, for scripts and monitoring.")
def status_command(as_json: bool) -> None:
    """One glance: queue depth, ledger, dead letters, oldest unfinished event, last applied.

    Exits with status 1 if the broker cannot be reached (the database part is still shown).
    """
    settings = load_settings()
    report = gather_status(settings)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo(format_status(report))
    if report["broker_error"] is not None:
        sys.exit(1)


def gather_status(settings: Settings) -> dict[str, Any]:
    now = datetime.now(UTC)
    with database(settings) as engine, transaction(engine) as connection:
        summary = summarise(connection)
    queue_depth: int | None = None
    ledger_size: int | None = None
    next_due: dict[str, Any] | None = None
    broker_error: str | None = None
    if settings.uses_redis_broker:
        try:
            queue_depth, ledger_size, next_due = _broker_status(settings, now)
        except Exception as error:  # noqa: BLE001 - any broker failure is reported, not raised
            broker_error = f"{type(error).__name__}: {error}"

    def moment(svix_id: str, at: datetime) -> dict[str, Any]:
        return {
            "svix_id": svix_id,
            "received_at": iso(at),
            "age_seconds": round((now - at).total_seconds(), 3),
        }

    last = summary.last_applied
    return {
        "queue": {"name": settings.queue_name, "depth": queue_depth},
        "ledger": {"size": ledger_size, "next_due": next_due},
        "dead_letters": summary.dead,
        "received": {
            "count": summary.received,
            "oldest": None
            if summary.oldest_received is None
            else moment(summary.oldest_received.svix_id, summary.oldest_received.received_at),
        },
        "last_applied": None
        if last is None or last.processed_at is None
        else {
            "svix_id": last.svix_id,
            "event_type": last.event_type,
            "processed_at": iso(last.processed_at),
            "age_seconds": round((now - last.processed_at).total_seconds(), 3),
            "event_timestamp": last.event_timestamp,
            "event_time": iso(event_time(last)),
        },
        "broker_error": broker_error,
    }


def _broker_status(settings: Settings, now: datetime) -> tuple[int, int, dict[str, Any] | None]:
    """LLEN of the queue, ZCARD of the ledger, and the ledger entry due next (the one waiting
    longest since it was last published) with its receipt time."""
    import redis

    from clerk_sync.core.queue import LEDGER_DUE_KEY, LEDGER_MESSAGES_KEY

    client: redis.Redis[bytes] = redis.Redis.from_url(
        settings.broker_url,
        socket_connect_timeout=settings.broker_publish_timeout_seconds,
        socket_timeout=max(settings.broker_publish_timeout_seconds, 5.0),
    )
    try:
        depth = int(client.llen(settings.queue_name))
        size = int(client.zcard(LEDGER_DUE_KEY))
        first = client.zrange(LEDGER_DUE_KEY, 0, 0)
        next_due: dict[str, Any] | None = None
        if first:
            svix_id = first[0].decode()
            stored = client.hget(LEDGER_MESSAGES_KEY, svix_id)
            received_at = None
            if stored is not None:
                received_at_ms = int(json.loads(stored)[1])
                received_at = datetime.fromtimestamp(received_at_ms / 1000, UTC)
            next_due = {
                "svix_id": svix_id,
                "received_at": iso(received_at),
                "age_seconds": None
                if received_at is None
                else round((now - received_at).total_seconds(), 3),
            }
    finally:
        client.close()
    return depth, size, next_due


def format_status(report: dict[str, Any]) -> str:
    now = datetime.now(UTC)

    def ago(seconds: float | None) -> str:
        if seconds is None:
            return "?"
        return age(now - timedelta(seconds=seconds), now) + " ago"

    queue, ledger = report["queue"], report["ledger"]
    if report["broker_error"] is not None:
        queue_line = ledger_line = f"unknown: broker unreachable ({report['broker_error']})"
    elif queue["depth"] is None:
        queue_line = ledger_line = "n/a (the broker is not Redis)"
    else:
        queue_line = f"{queue['depth']} message(s) waiting in {queue['name']!r}"
        ledger_line = f"{ledger['size']} accepted, not yet finished"
        if ledger["next_due"] is not None:
            due = ledger["next_due"]
            ledger_line += f"; next due {due['svix_id']} (received {ago(due['age_seconds'])})"
    received = report["received"]
    received_line = f"{received['count']} received (queued or being retried)"
    if received["oldest"] is not None:
        oldest = received["oldest"]
        received_line += (
            f"; oldest {oldest['svix_id']} received {ago(oldest['age_seconds'])} "
            f"({oldest['received_at']})"
        )
    dead_line = str(report["dead_letters"])
    if report["dead_letters"]:
        dead_line += "  (clerk-sync events list --status dead)"
    last = report["last_applied"]
    last_line = (
        "never"
        if last is None
        else f"{last['processed_at']} ({ago(last['age_seconds'])}): {last['event_type']} "
        f"{last['svix_id']}, event time {last['event_time'] or '-'}"
    )
    lines = [
        ("queue", queue_line),
        ("ledger", ledger_line),
        ("dead letters", dead_line),
        ("unfinished", received_line),
        ("last applied", last_line),
    ]
    width = max(len(name) for name, _ in lines)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in lines)


COMMANDS: Final = (events, rebuild_command, status_command)
"""Registered on ``clerk-sync`` by ``clerk_sync.cli``."""
