"""Batches: many queued events applied in one database transaction, in a pool process.

The worker's main process buffers the queued messages and hands them over as batches
(``clerk_sync.broker.batching``); ``process_batch`` applies one: one transaction
(``workers.processing.apply_batch``), retried as a whole on transient errors; if it keeps
failing, event by event, and an event that still fails is published again with a backoff (a
Celery retry) or dead-lettered. Events whose locks another batch holds are deferred.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

from clerk_sync.broker.batch_items import BatchItem
from clerk_sync.core.queue import APPLY_EVENT_TASK, BROKER_ERRORS, QueuedEvent
from models.database import is_transient
from models.events import APPLIED, EventStatus, IncomingEvent
from workers.change_fanout import after_commit
from workers.dead_letters import dead_letter as dead_letter_outcome
from workers.dead_letters import with_reasons
from workers.processing import (
    apply_batch_with_short_retries,
    apply_event,
    dead_letter,
    describe_event,
    record_retries,
)
from workers.retries import describe_error

if TYPE_CHECKING:
    from workers.runtime import WorkerRuntime

log = logging.getLogger("clerk_sync.worker")

CONTENTION_SQLSTATES: Final = frozenset({"55P03", "40P01", "40001"})
"""Lock timeout, deadlock, serialization failure: one event's trouble, not the database's."""


def run_batch(
    runtime: WorkerRuntime, items: list[BatchItem], wait_for_locks: bool = True
) -> list[str]:
    """The batch runner, in the pool process: one outcome per item (see ``process_batch``)."""
    try:
        return process_batch(runtime, items, wait_for_locks=wait_for_locks)
    except Exception:
        log.exception("batch failed unexpectedly", extra={"events": len(items)})
        return [EventStatus.FAILED] * len(items)


def process_batch(
    runtime: WorkerRuntime, items: Sequence[BatchItem], *, wait_for_locks: bool = True
) -> list[str]:
    """Apply a batch of queued events; returns, per item, its status (``applied``, ``skipped``,
    ``dead``) or ``retry``, ``failed``, ``requeue``, ``ignored``, or (without
    ``wait_for_locks``) ``deferred``: see ``workers.processing.apply_batch``."""
    started = time.perf_counter()
    settings = runtime.settings
    events: dict[str, IncomingEvent] = {}
    first_copy: dict[str, BatchItem] = {}
    for item in items:
        if item.svix_id in first_copy:
            continue
        first_copy[item.svix_id] = item
        try:
            events[item.svix_id] = describe_event(item.svix_id, item.payload, item.received_at_ms)
        except Exception as error:  # noqa: BLE001 - logged with its traceback, like a failed task
            _log_unexpected(item, error)
    unique = list(events.values())

    finished: dict[str, str] = {}
    deferred: set[str] = set()
    transient: dict[str, BaseException] = {}
    failed: set[str] = set(first_copy) - set(events)
    try:
        if unique:
            results = apply_batch_with_short_retries(
                runtime.engine,
                unique,
                settings.workspace_metadata_key,
                wait_for_locks=wait_for_locks,
                erase_personal_data=settings.erase_on_user_deleted,
            )
            finished = {
                svix_id: result.status
                for svix_id, result in results.items()
                if result.status != EventStatus.DEFERRED
            }
            deferred = {
                svix_id
                for svix_id, result in results.items()
                if result.status == EventStatus.DEFERRED
            }
    except Exception as error:  # noqa: BLE001 - handled event by event below
        if len(unique) == 1 and is_transient(error):
            transient[unique[0].svix_id] = error
        else:
            log.warning(
                "batch failed; applying its events one by one",
                extra={"events": len(unique), "error": describe_error(error)},
            )
            _one_by_one(runtime, unique, error, started, finished, transient, failed)

    # Dead letters carry their reason to the main process, which reports them as failed tasks.
    with_reasons(runtime.engine, finished)
    outcomes = _retry_or_dead_letter(runtime, first_copy, events, transient, finished, failed)
    outcomes.update(dict.fromkeys(deferred, EventStatus.DEFERRED))
    elapsed = time.perf_counter() - started
    _observe(runtime, items, events, finished, elapsed)
    if EventStatus.APPLIED in finished.values():
        after_commit(runtime.engine, settings)
    return [
        outcomes.get(item.svix_id, EventStatus.FAILED)
        if first_copy[item.svix_id] is item
        # Another copy of the same event: it shares a finished outcome, and is dropped otherwise.
        else finished.get(item.svix_id, EventStatus.IGNORED)
        for item in items
    ]


def _one_by_one(
    runtime: WorkerRuntime,
    events: Sequence[IncomingEvent],
    batch_error: BaseException,
    started: float,
    finished: dict[str, str],
    transient: dict[str, BaseException],
    failed: set[str],
) -> None:
    """After the batch kept failing: each event in its own transaction, once, so that one
    event's trouble (a lock held elsewhere, an unexpected error) holds back only that event.
    When the database itself is failing (not a lock), or the time allowed is spent, the rest
    are not tried: they go to Celery's backed-off retries at once."""
    deadline = started + runtime.settings.visibility_timeout_seconds / 4
    give_up: BaseException | None = None
    if is_transient(batch_error) and not _is_contention(batch_error):
        give_up = batch_error
    for event in events:
        if give_up is not None:
            transient[event.svix_id] = give_up
            continue
        try:
            finished[event.svix_id] = apply_event(
                runtime.engine,
                event,
                runtime.settings.workspace_metadata_key,
                erase_personal_data=runtime.settings.erase_on_user_deleted,
            )
        except Exception as error:  # noqa: BLE001 - retried, or logged with its traceback
            if not is_transient(error):
                _log_unexpected(event, error)
                if runtime.publisher.ledger is None:
                    # No ledger (RabbitMQ): nothing would publish it again, so it is
                    # dead-lettered now (visible, replayable), or retried if that fails.
                    try:
                        dead_letter(runtime.engine, event, error)
                    except Exception as unreachable:  # noqa: BLE001 - retried below
                        transient[event.svix_id] = unreachable
                    else:
                        finished[event.svix_id] = dead_letter_outcome(error)
                    continue
                failed.add(event.svix_id)
                continue
            transient[event.svix_id] = error
            if not _is_contention(error) or time.perf_counter() > deadline:
                give_up = error


def _retry_or_dead_letter(
    runtime: WorkerRuntime,
    items: dict[str, BatchItem],
    events: dict[str, IncomingEvent],
    transient: dict[str, BaseException],
    finished: dict[str, str],
    failed: set[str],
) -> dict[str, str]:
    """Hand each transiently failing event to a Celery retry (published again, same task id,
    ``retries`` + 1, after a backoff), or dead-letter it once its retries are exhausted."""
    outcomes: dict[str, str] = dict(finished)
    outcomes.update(dict.fromkeys(failed, EventStatus.FAILED))
    settings = runtime.settings
    exhausted = [s for s in transient if items[s].retries >= settings.max_retries]
    retrying = [s for s in transient if items[s].retries < settings.max_retries]
    unreachable: BaseException | None = None
    for svix_id in exhausted:
        if unreachable is None:
            try:
                dead_letter(runtime.engine, events[svix_id], transient[svix_id])
            except Exception as error:  # noqa: BLE001 - logged with its traceback below
                unreachable = error
            else:
                outcomes[svix_id] = finished[svix_id] = dead_letter_outcome(transient[svix_id])
                continue
        # Dead-lettering needs the database: the message is dropped as Celery drops a failed
        # task, and the event, still in the ledger, is published again by the sweeper. Without
        # a ledger (RabbitMQ) the message goes back on the queue instead.
        _log_unexpected(items[svix_id], unreachable)
        no_ledger = runtime.publisher.ledger is None
        outcomes[svix_id] = EventStatus.REQUEUE if no_ledger else EventStatus.FAILED
    if retrying:
        record_retries(runtime.engine, [(events[s], transient[s]) for s in retrying])
    for svix_id in retrying:
        item = items[svix_id]
        countdown = runtime.retry_countdown(item.retries)
        try:
            runtime.publisher.send(
                QueuedEvent(
                    item.svix_id, item.payload, item.received_at_ms, events[svix_id].event_type
                ),
                task_id=item.task_id,
                retries=item.retries + 1,
                countdown=countdown,
            )
        except BROKER_ERRORS as error:
            log.error(
                "event could not be published for a retry; returned to the queue",
                extra={"svix_id": svix_id, "error": describe_error(error)},
            )
            outcomes[svix_id] = EventStatus.REQUEUE
            continue
        event_type = (events[svix_id].event_type or "unknown")[:64]
        runtime.metrics.retries.labels(event_type).inc()
        # Celery's own wording for a retried task, which operators (and log searches) know.
        log.warning(
            "Task %s[%s] retry: Retry in %ss: %s",
            APPLY_EVENT_TASK,
            item.task_id,
            round(countdown, 3),
            describe_error(transient[svix_id]),
            extra={"svix_id": svix_id, "event_type": events[svix_id].event_type},
        )
        outcomes[svix_id] = EventStatus.RETRY
    return outcomes


def _observe(
    runtime: WorkerRuntime,
    items: Sequence[BatchItem],
    events: dict[str, IncomingEvent],
    finished: dict[str, str],
    elapsed: float,
) -> None:
    """Per message with a final outcome, as a single task would count it (a duplicate counts
    as the outcome it duplicates)."""
    metrics = runtime.metrics
    now = time.time()
    for item in items:
        status = finished.get(item.svix_id)
        event = events.get(item.svix_id)
        if status is None or event is None:
            continue
        event_type = (event.event_type or "unknown")[:64]
        metrics.duration.labels(event_type).observe(elapsed)
        metrics.events.labels(status, event_type).inc()
        if status == APPLIED and event.event_timestamp is not None:
            metrics.lag.observe(max(0.0, now - event.event_timestamp / 1000))


def _is_contention(error: BaseException) -> bool:
    return getattr(getattr(error, "orig", None), "sqlstate", None) in CONTENTION_SQLSTATES


def _log_unexpected(item: BatchItem | IncomingEvent, error: BaseException) -> None:
    """Celery's wording for a task that raised, with the traceback."""
    log.error(
        "Task %s[%s] raised unexpected: %r",
        APPLY_EVENT_TASK,
        getattr(item, "task_id", item.svix_id),
        error,
        exc_info=error,
        extra={"svix_id": item.svix_id},
    )


def batching(settings: Any) -> bool:
    """Whether a worker with these settings applies batches (``batch_size`` > 1 on Redis or
    RabbitMQ; on RabbitMQ each message is acknowledged with kombu's ``Message.ack`` once its
    batch committed, and the prefetch count is RabbitMQ's)."""
    return bool(
        settings.batch_size > 1 and (settings.uses_redis_broker or settings.uses_amqp_broker)
    )


def batching_options(settings: Any, runtime_key: str) -> dict[str, Any]:
    """Task options of ``clerk_sync.apply_event`` for these settings."""
    size = settings.batch_size if batching(settings) else 1
    return {
        "batch_size": size,
        "batch_flush_interval": settings.batch_flush_interval_seconds,
        "batch_runtime": runtime_key,
    }


def prefetch_multiplier(settings: Any) -> int:
    """Celery reserves ``multiplier x concurrency`` unacknowledged messages per worker. One at a
    time per process without batching; with it, room for two full batches per pool process
    (one being applied while the next fills), and no more: every reserved message counts
    against the visibility timeout, and the limit bounds a worker's memory on any backlog."""
    if not batching(settings):
        return 1
    return int(2 * settings.batch_size)


def pool_optimization(settings: Any, requested: str | None) -> str | None:
    """The prefork pool's scheduling (Celery's ``-O``) for a worker with these settings.

    Celery's default, "fair", writes a task to a pool process only once that process is idle,
    and it finds out only after it has read the previous result and run its callback; for a
    batch that callback acknowledges and settles a hundred messages, and the process waits
    meanwhile (a fifth of its time, measured). With batches the worker asks for "fcfs": the
    next batch is written to a process while it still applies the previous one, and it starts
    on it at once. The cost of "fcfs", a task waiting behind a long one while another process
    is idle, is small when every task is a batch of the same size. ``-O fair`` keeps Celery's
    behaviour."""
    if batching(settings) and requested in (None, "default"):
        return "fcfs"
    return requested
