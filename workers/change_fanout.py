"""The change feed's fan-out: every change sent to the application's own Celery task
(``CLERK_SYNC_CHANGES_TASK`` on ``CLERK_SYNC_CHANGES_QUEUE``), at least once, in id order.

The fan-out is a consumer of the feed like any other (``models.changes``), named
``FANOUT_CONSUMER``: in one transaction it locks its position, reads the changes after it,
publishes each, and saves the new position. A crash after publishing and before that commit
publishes those changes again; nothing is ever skipped, since the position only moves once the
broker has taken the messages. Each task carries the change's id (in its document and its task
id, ``clerk-sync-change-<id>``) so the application can ignore a copy.

It runs after each batch commits (``after_commit``: low latency, and it never waits for another
worker's run: a position locked elsewhere is left to that worker) and from beat every
``FANOUT_INTERVAL`` (what a crashed or busy worker left behind, and the changes reconcile and
rebuild make). Retention (``CLERK_SYNC_CHANGES_RETENTION_DAYS``) runs from beat too.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from celery import Celery
from sqlalchemy import Connection, Engine, select

from clerk_sync.core.settings import Settings
from models.changes import changes_after, purge_changes, read_position, save_position
from models.database import transaction
from models.statements import insert_for
from models.tables import sync_change_positions

log = logging.getLogger("clerk_sync.worker")

FANOUT_TASK: Final = "clerk_sync.fan_out_changes"
PURGE_CHANGES_TASK: Final = "clerk_sync.purge_changes"
FANOUT_CONSUMER: Final = "clerk-sync:fan-out"
FANOUT_INTERVAL: Final = timedelta(seconds=5)
PURGE_CHANGES_INTERVAL: Final = timedelta(hours=1)
PAGE: Final = 500

_publishers: dict[tuple[str, str], Celery] = {}


def change_feed_schedule(settings: Settings) -> dict[str, Any]:
    """Beat's entries for the feed: the fan-out's catch-up and the retention, each opt-in."""
    schedule: dict[str, Any] = {}
    if settings.changes_task:
        schedule["fan-out-changes"] = {"task": FANOUT_TASK, "schedule": FANOUT_INTERVAL}
    if settings.changes_retention_days is not None:
        schedule["purge-changes"] = {"task": PURGE_CHANGES_TASK, "schedule": PURGE_CHANGES_INTERVAL}
    return schedule


def register_change_tasks(app: Celery, settings: Settings, engine: Any) -> None:
    """Add the feed's periodic tasks to the worker's app (``engine``: a callable returning the
    process's engine, made on first use)."""

    def fan_out_changes() -> int:
        return fan_out(engine(), settings, wait=True)

    def purge_old_changes() -> int:
        return purge(engine(), settings)

    # Called, not used as decorators: Celery's decorator is untyped.
    app.task(name=FANOUT_TASK, ignore_result=True, shared=False)(fan_out_changes)
    app.task(name=PURGE_CHANGES_TASK, ignore_result=True, shared=False)(purge_old_changes)


def after_commit(engine: Engine, settings: Settings) -> None:
    """After a transaction with changes committed: publish what is pending, unless another
    process is at it; a failure is logged, and beat's run publishes them instead."""
    if not settings.changes_task:
        return
    try:
        fan_out(engine, settings, wait=False)
    except Exception as error:  # noqa: BLE001 - beat publishes them later
        log.warning(
            "changes not published; the periodic fan-out will",
            extra={"error": type(error).__name__},
        )


def fan_out(engine: Engine, settings: Settings, *, wait: bool = True) -> int:
    """Publish every change after the fan-out's position to the application's task, a page
    per transaction; returns how many were published. Without ``wait``, a position another
    process holds locked is left to it (PostgreSQL)."""
    if not settings.changes_task:
        return 0
    publisher = _publisher(settings)
    published = 0
    while True:
        with transaction(engine) as connection:
            position = _take_position(connection, wait=wait)
            if position is None:
                return published
            changes = changes_after(connection, position, PAGE)
            with publisher.connection_for_write() as broker:
                producer = publisher.amqp.Producer(broker)
                for change in changes:
                    publisher.send_task(
                        settings.changes_task,
                        args=[change.as_message()],
                        queue=settings.changes_queue,
                        task_id=f"clerk-sync-change-{change.id}",
                        producer=producer,
                    )
            if changes:
                save_position(connection, FANOUT_CONSUMER, changes[-1].id)
        published += len(changes)
        if len(changes) < PAGE:
            if published:
                log.info("changes published", extra={"published": published})
            return published


def _take_position(connection: Connection, *, wait: bool) -> int | None:
    """The fan-out's position, its row locked until the transaction ends (PostgreSQL; SQLite's
    writers take turns anyway); None when another process holds it and ``wait`` is false."""
    if connection.dialect.name != "postgresql":
        return read_position(connection, FANOUT_CONSUMER)
    connection.execute(
        insert_for(connection, sync_change_positions)
        .values(consumer=FANOUT_CONSUMER, last_id=0, updated_at=datetime.now(UTC))
        .on_conflict_do_nothing()
    )
    statement = (
        select(sync_change_positions.c.last_id)
        .where(sync_change_positions.c.consumer == FANOUT_CONSUMER)
        .with_for_update(skip_locked=not wait)
    )
    found = connection.execute(statement).scalar_one_or_none()
    return None if found is None else int(found)


def _publisher(settings: Settings) -> Celery:
    """A plain Celery client of the application's broker, one per process: the application's
    worker reads standard Celery messages (JSON)."""
    url = settings.changes_broker_url or settings.broker_url
    key = (url, settings.changes_queue)
    app = _publishers.get(key)
    if app is None:
        app = Celery("clerk-sync-changes", broker=url, set_as_current=False)
        app.conf.update(
            task_serializer="json",
            accept_content=["json"],
            broker_connection_retry_on_startup=False,
            broker_transport_options={"max_retries": 3},
        )
        app = _publishers[key] = app
    return app


def purge(engine: Engine, settings: Settings) -> int:
    """Delete the changes older than ``changes_retention_days`` (nothing when unset)."""
    days = settings.changes_retention_days
    if days is None:
        return 0
    with transaction(engine) as connection:
        purged = purge_changes(connection, timedelta(days=days))
    if purged:
        log.info("old changes purged", extra={"purged": purged, "older_than_days": days})
    return purged
