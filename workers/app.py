"""The Celery app: ``clerk_sync.apply_event`` applies queued events (in batches on a Redis
broker, see ``workers.batches``); a periodic task sweeps the ledger."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import replace
from datetime import timedelta
from functools import partial
from typing import Any, NoReturn

import structlog
from celery import Celery, Task, signals
from celery.exceptions import Reject, Retry
from prometheus_client import CollectorRegistry

from clerk_sync.broker.batch_items import register_batch_runner
from clerk_sync.broker.batching import BatchingTask
from clerk_sync.broker.pool import POOL
from clerk_sync.broker.transport import transport_for
from clerk_sync.core.logs import configure_logging
from clerk_sync.core.message_auth import ForgedMessageError, forged_argsrepr
from clerk_sync.core.queue import (
    APPLY_EVENT_TASK,
    BROKER_ERRORS,
    SWEEP_LEDGER_TASK,
    Ledger,
    QueuedEvent,
    broker_configuration,
)
from clerk_sync.core.settings import Settings
from models.database import is_transient, transaction
from models.events import APPLIED, DEAD, FINISHED, event_status
from workers.authentication import MessageCheck
from workers.batches import batching_options, pool_optimization, prefetch_multiplier, run_batch
from workers.change_fanout import after_commit, change_feed_schedule, register_change_tasks
from workers.dead_letters import DeadLetterError, dead_letter_exception_text
from workers.erasure import ERASE_TASK, erase_requested
from workers.partitioning import PARTITIONS_TASK, create_partitions_ahead, partitions_schedule
from workers.processing import (
    apply_with_short_retries,
    dead_letter,
    describe_event,
    record_retry,
)
from workers.reconcile import RECONCILE_TASK, reconcile_schedule, scheduled_reconcile
from workers.runtime import WorkerRuntime
from workers.sweeping import give_up_on, one_sweeper, record_conflicts

log = logging.getLogger("clerk_sync.worker")

SWEEP_BATCH = 500


def celery_configuration(settings: Settings) -> dict[str, Any]:
    return {
        **broker_configuration(settings),
        **(
            {"broker_transport": transport_for(settings.broker_url)}
            if settings.uses_redis_broker
            else {}
        ),
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": prefetch_multiplier(settings),
        "worker_pool": POOL,
        "worker_send_task_events": True,
        "task_send_sent_event": False,
        "task_track_started": False,
        "worker_hijack_root_logger": False,
        "beat_schedule": {
            "sweep-ledger": {
                "task": SWEEP_LEDGER_TASK,
                "schedule": timedelta(seconds=settings.ledger_sweep_interval_seconds),
            },
            # Deleted users' stored events (requested by ``user.deleted``), off the batches.
            "erase-deleted-users": {
                "task": ERASE_TASK,
                "schedule": timedelta(seconds=settings.ledger_sweep_interval_seconds),
            },
            **purge_schedule(settings),
            **partitions_schedule(),
            **reconcile_schedule(settings),
            **change_feed_schedule(settings),
        },
    }


def create_celery_app(settings: Settings) -> Celery:
    app = Celery("clerk_sync", set_as_current=False)
    app.conf.update(celery_configuration(settings))
    runtime = WorkerRuntime(settings, app)
    app.clerk_sync_runtime = runtime
    check = MessageCheck(settings, lambda: runtime.metrics.registry)

    @signals.setup_logging.connect(weak=False, dispatch_uid="clerk_sync.setup_logging")
    def setup_logging(**_: Any) -> None:
        configure_logging(settings.log_format, settings.log_level)

    @signals.worker_init.connect(weak=False, dispatch_uid="clerk_sync.worker_metrics")
    def serve_metrics(**_: Any) -> None:
        """Started in the main worker process, before the pool forks."""
        check.forged  # noqa: B018 - the counter exists (at 0) from the start
        if settings.worker_metrics_port:
            try:
                runtime.metrics.serve(settings.worker_metrics_port)
            except OSError as error:
                log.warning(
                    "metrics server not started",
                    extra={"port": settings.worker_metrics_port, "error": str(error)},
                )

    @signals.worker_init.connect(weak=False, dispatch_uid="clerk_sync.pool_optimization")
    def schedule_pool(sender: Any = None, **_: Any) -> None:
        """Before the pool is built: how it hands tasks to its processes (``pool_optimization``)."""
        if sender is not None:
            sender.optimization = pool_optimization(settings, sender.optimization)

    @signals.worker_process_init.connect(weak=False, dispatch_uid="clerk_sync.warm_up")
    def warm_up(**_: Any) -> None:
        """In each new pool process, in the background: connect to the database and Redis now,
        so that the first events do not wait for it (nor does the pool start-up, which Celery
        times out, wait for a database that is down)."""
        threading.Thread(target=runtime.warm_up, name="clerk-sync-warm-up", daemon=True).start()

    # shared=False: each task is bound to this app's settings, even if a process creates several.
    # On a Redis broker the worker batches these messages (BatchingTask's strategy, see
    # workers.batches); the body below applies one event, for other brokers and eager calls.
    @app.task(
        bind=True,
        shared=False,
        base=BatchingTask,
        name=APPLY_EVENT_TASK,
        acks_late=True,
        reject_on_worker_lost=True,
        ignore_result=True,
        max_retries=settings.max_retries,
        # Logged by Celery as expected failures (one line, no traceback): they are reported.
        throws=(ForgedMessageError, DeadLetterError),
        **batching_options(
            settings,
            register_batch_runner(
                partial(run_batch, runtime),
                lambda: runtime.publisher.ledger,
                check.check_message,
            ),
        ),
    )
    def apply_event(
        task: Task, svix_id: str, payload: str, received_at_ms: int, mac: str | None = None
    ) -> str:
        """Apply one event (its MAC checked first); on a transient failure retry with backoff,
        then dead-letter. A forged or dead-lettered event fails the task (Flower shows it)."""
        if not check.check_message(task.request.id, [svix_id, payload, received_at_ms, mac]):
            # Celery's failure line shows this instead of the arguments (no payload).
            task.request.argsrepr = forged_argsrepr(svix_id)
            raise ForgedMessageError("its MAC does not check out; not applied")
        event = describe_event(svix_id, payload, received_at_ms)
        event_type = (event.event_type or "unknown")[:64]
        structlog.contextvars.bind_contextvars(svix_id=svix_id, event_type=event.event_type)
        started = time.perf_counter()
        try:
            status = apply_with_short_retries(
                runtime.engine,
                event,
                settings.workspace_metadata_key,
                erase_personal_data=settings.erase_on_user_deleted,
            )
        except Exception as error:
            if not is_transient(error) and runtime.publisher.ledger is not None:
                raise  # the sweeper publishes the event again, then dead-letters it
            if not is_transient(error) or task.request.retries >= settings.max_retries:
                # Retries spent or, without a ledger (RabbitMQ), an unexpected error that
                # nothing would publish again: dead-lettered now (visible, replayable).
                try:
                    dead_letter(runtime.engine, event, error)
                except Exception as unreachable:
                    if runtime.publisher.ledger is not None:
                        raise  # the sweeper publishes the event again
                    # No ledger (RabbitMQ): back on the queue rather than dropped.
                    raise Reject(unreachable, requeue=True) from unreachable
                status = DEAD
            else:
                record_retry(runtime.engine, event, error)
                runtime.metrics.retries.labels(event_type).inc()
                queued = QueuedEvent(svix_id, payload, received_at_ms, event.event_type)
                countdown = runtime.retry_countdown(task.request.retries)
                if runtime.publisher.confirms:
                    _confirmed_retry(runtime, task, queued, countdown, error)
                raise task.retry(
                    exc=error, countdown=countdown, argsrepr=queued.argsrepr()
                ) from error
        finally:
            structlog.contextvars.unbind_contextvars("svix_id", "event_type")
        runtime.metrics.duration.labels(event_type).observe(time.perf_counter() - started)
        runtime.metrics.events.labels(status, event_type).inc()
        if status == APPLIED and event.event_timestamp is not None:
            runtime.metrics.lag.observe(max(0.0, time.time() - event.event_timestamp / 1000))
        _forget(runtime, svix_id)
        if status == APPLIED:
            after_commit(runtime.engine, settings)
        if status == DEAD:
            raise DeadLetterError(dead_letter_exception_text(runtime.engine, svix_id))
        return status

    @app.task(name=SWEEP_LEDGER_TASK, ignore_result=True, shared=False)
    def sweep_ledger() -> int:
        return sweep(runtime, check=check)

    @app.task(name=ERASE_TASK, ignore_result=True, shared=False)
    def erase_deleted_users() -> int:
        return erase_requested(runtime.engine)

    @app.task(name=PURGE_EVENTS_TASK, ignore_result=True, shared=False)
    def purge_old_events() -> int:
        return purge(runtime)

    @app.task(name=PARTITIONS_TASK, ignore_result=True, shared=False)
    def create_partitions() -> list[str]:
        return create_partitions_ahead(runtime.engine)

    @app.task(name=RECONCILE_TASK, ignore_result=True, acks_late=False, shared=False)
    def reconcile_with_clerk() -> dict[str, Any] | None:
        """Opt-in (``CLERK_SYNC_RECONCILE_INTERVAL_MINUTES``). Acknowledged on receipt: a run
        outlasts the visibility timeout, and Redis must not hand it to a second worker."""
        return scheduled_reconcile(runtime.engine, settings)

    register_change_tasks(app, settings, lambda: runtime.engine)
    return app


def sweep(
    runtime: WorkerRuntime, now: float | None = None, check: MessageCheck | None = None
) -> int:
    """Re-publish events the ledger has held past their due time and that the inbox does not
    show as finished; drop the ones that are, and the entries whose MAC does not check out
    (forged: never published). An event re-published ``ledger_max_redeliveries`` times is
    dead-lettered and dropped instead; bodies the ingress set aside (another body under an svix
    id it held) are recorded in the inbox. Returns how many were re-published. One sweeper at a
    time (``workers.sweeping.one_sweeper``): another that finds it running returns 0."""
    ledger = runtime.publisher.ledger
    if ledger is None:
        return 0
    with one_sweeper(ledger) as alone:
        if not alone:
            return 0
        return _sweep(runtime, ledger, time.time() if now is None else now, check)


def _sweep(runtime: WorkerRuntime, ledger: Ledger, now: float, check: MessageCheck | None) -> int:
    if check is None:
        check = MessageCheck(runtime.settings, CollectorRegistry)
    republished = 0
    finished: list[str] = []
    for event in ledger.overdue(now, SWEEP_BATCH):
        if not check.check_entry(event.svix_id, event.payload, event.received_at_ms, event.mac):
            # Not written by our publishers: dropped, never published.
            finished.append(event.svix_id)
            continue
        with transaction(runtime.engine) as connection:
            status = event_status(connection, event.svix_id)
        if status in FINISHED or status == DEAD:
            finished.append(event.svix_id)
            continue
        redeliveries = ledger.redeliveries(event.svix_id)
        if redeliveries >= runtime.settings.ledger_max_redeliveries:
            give_up_on(runtime, event, redeliveries)
            finished.append(event.svix_id)
            continue
        event_type = event_type_of(event)
        runtime.publisher.send(replace(event, event_type=event_type))
        ledger.redelivered(event.svix_id, now + runtime.settings.ledger_redeliver_after_seconds)
        republished += 1
        log.warning(
            "ledger: event re-published",
            extra={"svix_id": event.svix_id, "event_type": event_type},
        )
    ledger.forget(finished)
    record_conflicts(runtime, ledger, SWEEP_BATCH)
    return republished


def _confirmed_retry(
    runtime: WorkerRuntime, task: Task, event: QueuedEvent, countdown: float, error: Exception
) -> NoReturn:
    """RabbitMQ: the retry is published through the confirming publisher (Celery's own
    connections are not in confirm mode) before the message is acknowledged, as the batches'
    retries are; if RabbitMQ does not confirm it, the message goes back on the queue."""
    try:
        runtime.publisher.send(
            event, task_id=task.request.id, retries=task.request.retries + 1, countdown=countdown
        )
    except BROKER_ERRORS as unpublished:
        raise Reject(unpublished, requeue=True) from unpublished
    raise Retry(exc=error, when=countdown) from error


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
        log.warning("ledger: entry not dropped; the sweeper will", extra={"svix_id": svix_id})


PURGE_EVENTS_TASK = "clerk_sync.purge_events"
PURGE_INTERVAL = timedelta(hours=1)


def purge_schedule(settings: Settings) -> dict[str, Any]:
    """Opt-in (``CLERK_SYNC_PURGE_AFTER_DAYS``): purged events are lost to ``rebuild``."""
    if settings.purge_after_days is None:
        return {}
    return {"purge-events": {"task": PURGE_EVENTS_TASK, "schedule": PURGE_INTERVAL}}


def purge(runtime: WorkerRuntime, now: float | None = None) -> int:
    """Delete applied and skipped events received more than ``purge_after_days`` ago (dead
    letters are kept); returns how many. Does nothing unless the setting is set."""
    from datetime import UTC, datetime

    from models.inbox import purge_events

    days = runtime.settings.purge_after_days
    if days is None:
        return 0
    now = time.time() if now is None else now
    purged = purge_events(runtime.engine, datetime.fromtimestamp(now, UTC) - timedelta(days=days))
    if purged:
        log.info("old events purged", extra={"purged": purged, "older_than_days": days})
    return purged
