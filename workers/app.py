"""The Celery app: one task applies one event; a periodic task sweeps the ledger."""

from __future__ import annotations

import logging
import random
import time
from datetime import timedelta
from functools import cached_property
from typing import Any

from celery import Celery, Task
from sqlalchemy import Engine

from clerk_sync.settings import Settings
from ingress.queue import (
    APPLY_EVENT_TASK,
    BROKER_ERRORS,
    SWEEP_LEDGER_TASK,
    Publisher,
    QueuedEvent,
    broker_configuration,
)
from models.database import is_transient, make_engine, transaction
from models.events import DEAD, FINISHED, event_status
from workers.processing import (
    apply_with_short_retries,
    dead_letter,
    describe_event,
    record_retry,
)

log = logging.getLogger("clerk_sync.worker")

SWEEP_BATCH = 500


class WorkerRuntime:
    """Per-process resources, created on first use so forking and importing open nothing."""

    def __init__(self, settings: Settings, celery_app: Celery) -> None:
        self.settings = settings
        self._celery = celery_app

    @cached_property
    def engine(self) -> Engine:
        return make_engine(
            self.settings.database_url, lock_timeout_ms=self.settings.db_lock_timeout_ms
        )

    @cached_property
    def publisher(self) -> Publisher:
        return Publisher(self.settings, self._celery)

    def retry_countdown(self, retries: int) -> float:
        """Exponential backoff with full jitter, capped below the visibility timeout."""
        ceiling = min(
            self.settings.retry_backoff_max_seconds,
            self.settings.retry_backoff_seconds * 2**retries,
        )
        return random.uniform(ceiling / 2, ceiling)


def celery_configuration(settings: Settings) -> dict[str, Any]:
    return {
        **broker_configuration(settings),
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "worker_send_task_events": True,
        "task_send_sent_event": False,
        "task_track_started": False,
        "worker_hijack_root_logger": False,
        "beat_schedule": {
            "sweep-ledger": {
                "task": SWEEP_LEDGER_TASK,
                "schedule": timedelta(seconds=settings.ledger_sweep_interval_seconds),
            }
        },
    }


def create_celery_app(settings: Settings) -> Celery:
    app = Celery("clerk_sync", set_as_current=False)
    app.conf.update(celery_configuration(settings))
    runtime = WorkerRuntime(settings, app)
    app.clerk_sync_runtime = runtime

    @app.task(
        bind=True,
        name=APPLY_EVENT_TASK,
        acks_late=True,
        reject_on_worker_lost=True,
        ignore_result=True,
        max_retries=settings.max_retries,
    )
    def apply_event(task: Task, svix_id: str, payload: str, received_at_ms: int) -> str:
        """Apply one event; on a transient failure retry with backoff, then dead-letter."""
        event = describe_event(svix_id, payload, received_at_ms)
        try:
            status = apply_with_short_retries(
                runtime.engine, event, settings.workspace_metadata_key
            )
        except Exception as error:
            if not is_transient(error):
                raise
            if task.request.retries >= settings.max_retries:
                dead_letter(runtime.engine, event, error)
                status = DEAD
            else:
                record_retry(runtime.engine, event, error)
                raise task.retry(
                    exc=error, countdown=runtime.retry_countdown(task.request.retries)
                ) from error
        _forget(runtime, svix_id)
        return status

    @app.task(name=SWEEP_LEDGER_TASK, ignore_result=True)
    def sweep_ledger() -> int:
        return sweep(runtime)

    return app


def sweep(runtime: WorkerRuntime, now: float | None = None) -> int:
    """Re-publish events the ledger has held past their due time and that the inbox does not
    show as finished; drop the ones that are. Returns how many were re-published."""
    ledger = runtime.publisher.ledger
    if ledger is None:
        return 0
    now = time.time() if now is None else now
    republished = 0
    finished: list[str] = []
    for event in ledger.overdue(now, SWEEP_BATCH):
        with transaction(runtime.engine) as connection:
            status = event_status(connection, event.svix_id)
        if status in FINISHED or status == DEAD:
            finished.append(event.svix_id)
            continue
        runtime.publisher.send(event)
        ledger.postpone(event.svix_id, now + runtime.settings.ledger_redeliver_after_seconds)
        republished += 1
        log.warning("ledger: re-published %s (svix_id=%s)", event_type_of(event), event.svix_id)
    ledger.forget(finished)
    return republished


def event_type_of(event: QueuedEvent) -> str | None:
    return describe_event(event.svix_id, event.payload, event.received_at_ms).event_type


def _forget(runtime: WorkerRuntime, svix_id: str) -> None:
    """The outcome is committed; the ledger entry has done its job. If Redis is unreachable
    just now, the sweeper finds the entry later and drops it after checking the inbox."""
    ledger = runtime.publisher.ledger
    if ledger is None:
        return
    try:
        ledger.forget([svix_id])
    except BROKER_ERRORS:
        log.warning("ledger: could not drop %s; the sweeper will", svix_id)
