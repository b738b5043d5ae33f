"""``clerk-sync status``: one glance at the queue, the ledger, the inbox and whether the broker
keeps what the ingress accepts.

The numbers come from ``models.inbox.summarise`` (the database),
``clerk_sync.core.queue.queue_status`` and ``clerk_sync.core.durability`` (the broker's Redis);
this module puts them in one report, as JSON or as lines.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from clerk_sync.cli.common import database, load_settings
from clerk_sync.cli.formatting import age, event_time, iso
from clerk_sync.core.settings import Settings
from models.database import transaction
from models.inbox import summarise


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="JSON, for scripts and monitoring.")
def status_command(as_json: bool) -> None:
    """One glance: queue depth, ledger, dead letters, oldest unfinished event, last applied,
    and whether the broker is durable.

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
    """The report ``status --json`` prints: the broker part is None for a broker other than
    Redis, and ``broker_error`` says why when Redis could not be read."""
    from clerk_sync.core.durability import check_broker
    from clerk_sync.core.queue import QueueStatus, queue_status

    now = datetime.now(UTC)
    with database(settings) as engine, transaction(engine) as connection:
        summary = summarise(connection)
    queue: QueueStatus | None = None
    broker_error: str | None = None
    if settings.uses_redis_broker:
        try:
            queue = queue_status(settings)
        except Exception as error:  # noqa: BLE001 - any broker failure is reported, not raised
            broker_error = f"{type(error).__name__}: {error}"
    durability = check_broker(settings)

    def moment(svix_id: str, at: datetime) -> dict[str, Any]:
        return {
            "svix_id": svix_id,
            "received_at": iso(at),
            "age_seconds": round((now - at).total_seconds(), 3),
        }

    next_due: dict[str, Any] | None = None
    if queue is not None and queue.next_due is not None:
        received_at = (
            None
            if queue.next_due_received_at_ms is None
            else datetime.fromtimestamp(queue.next_due_received_at_ms / 1000, UTC)
        )
        next_due = {
            "svix_id": queue.next_due,
            "received_at": iso(received_at),
            "age_seconds": None
            if received_at is None
            else round((now - received_at).total_seconds(), 3),
        }
    last = summary.last_applied
    return {
        "queue": {"name": settings.queue_name, "depth": None if queue is None else queue.depth},
        "ledger": {"size": None if queue is None else queue.ledger_size, "next_due": next_due},
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
        "durable": durability.durable,
        "durability": durability.as_dict(),
    }


def format_status(report: dict[str, Any]) -> str:
    """The report as aligned lines, with ages."""
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
    durability = report["durability"]
    durable_line = {True: "yes", False: "NO", None: durability["verdict"].replace("_", " ")}[
        report["durable"]
    ]
    if durability["reasons"]:
        durable_line += ": " + "; ".join(durability["reasons"])
    lines = [
        ("durable", durable_line),
        ("queue", queue_line),
        ("ledger", ledger_line),
        ("dead letters", dead_line),
        ("unfinished", received_line),
        ("last applied", last_line),
    ]
    width = max(len(name) for name, _ in lines)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in lines)
