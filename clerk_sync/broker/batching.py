"""The worker's main-process side of batches: a Celery task strategy that buffers the queued
messages and hands them to a pool process as one batch, and acknowledges a batch's messages in
one Redis round trip once their outcomes are committed.

Batches are handed over

- at once while a pool process is idle (so at low traffic an event waits for nothing),
- when ``batch_size`` messages are buffered,
- or ``batch_flush_interval`` after the first buffered message, whichever comes first
  (``Batcher.flush``).

The pool process runs the batch runner registered with ``register_batch_runner``
(``workers.batches.run_batch``) and returns one outcome per message
(``models.events.EventStatus``). Events whose locks another batch holds come back deferred, to
the buffer for a later batch; after ``MAX_DEFERRALS`` their batch waits for them. Each message
is acknowledged only after the pool process returned, that is after its event's outcome was
committed (late acknowledgement); if the pool process dies, the batch's messages are re-queued
(``task_reject_on_worker_lost``).
"""

from __future__ import annotations

import logging
import time
from functools import partial
from typing import Any, Final

from celery import Task, signals
from celery.concurrency import prefork, solo
from celery.utils.imports import symbol_by_name
from celery.utils.time import timezone
from celery.worker.request import create_request_cls
from celery.worker.state import task_accepted, task_ready, task_reserved, task_scheduled
from celery.worker.strategy import hybrid_to_proto2, proto1_to_proto2
from kombu.asynchronous.timer import to_timestamp

from clerk_sync.broker.batch_items import (
    batch_item,
    message_args,
    run_batch,
    runner_check,
    runner_ledger,
)
from clerk_sync.broker.settle import acknowledge_all, settle
from clerk_sync.core.message_auth import ForgedMessageError, forged_argsrepr
from models.events import FINAL_OUTCOMES, EventStatus

log = logging.getLogger("clerk_sync.worker")

MAX_DEFERRALS: Final = 3
"""Batches that may defer an event (its lock held by another batch) before one waits for it."""

SUPPORTED_POOLS: Final = (prefork.TaskPool, solo.TaskPool)
"""Pools (and their subclasses, such as ``clerk_sync.broker.pool.TaskPool``) whose results come
back in the main process's event loop, not in other threads."""


class BatchingTask(Task):  # type: ignore[misc]
    """Base class of ``clerk_sync.apply_event``.

    Called as a task (eagerly, or through Celery's default strategy on brokers other than Redis,
    as ``clerk-sync dev`` runs it) it applies one event. With ``batch_size`` > 1 on a Redis
    broker, the prefork or solo pool and Celery's event loop, its strategy batches instead.
    """

    batch_size: int = 1
    batch_flush_interval: float = 0.05
    batch_runtime: str = ""

    def start_strategy(self, app: Any, consumer: Any, **kwargs: Any) -> Any:
        if (
            self.batch_size <= 1
            or getattr(consumer, "hub", None) is None
            or not isinstance(consumer.pool, SUPPORTED_POOLS)
        ):
            return super().start_strategy(app, consumer, **kwargs)
        batcher = Batcher(self, app, consumer, super().start_strategy(app, consumer, **kwargs))
        previous = getattr(self, "_batcher", None)
        if previous is not None:
            previous.retire()
        self._batcher = batcher
        return batcher.on_message


class Batcher:
    """The strategy of ``BatchingTask`` in the worker's main process (one per consumer start;
    a reconnected consumer gets a new one and the old one drops what it still buffers, since
    the broker redelivers those messages)."""

    def __init__(self, task: BatchingTask, app: Any, consumer: Any, one_by_one: Any) -> None:
        self.task = task
        self.one_by_one = one_by_one
        """Celery's default strategy for this task: it takes the messages while a rate limit is
        set (``celery control rate_limit``), which it enforces, one task per event."""
        self.app = app
        self.consumer = consumer
        self.pool = consumer.pool
        self.timer = consumer.timer
        self.hostname = consumer.hostname
        self.eventer = consumer.event_dispatcher
        self.events_enabled = bool(self.eventer and self.eventer.enabled and task.send_events)
        if self.events_enabled and getattr(self.eventer, "buffer_limit", 0) < 2 * task.batch_size:
            # Celery buffers task events and publishes them together once per event-loop turn,
            # or whenever this many are waiting: let a whole batch's events go as one message.
            self.eventer.buffer_limit = 2 * task.batch_size
        self.revoked = consumer.controller.state.revoked
        self.request_class = create_request_cls(
            symbol_by_name(task.Request), task, consumer.pool, self.hostname, self.eventer, app=app
        )
        self.ledger = runner_ledger(task.batch_runtime)
        self.check = runner_check(task.batch_runtime)
        self.batch_size = task.batch_size
        self.flush_interval = task.batch_flush_interval
        self.buffer: list[Any] = []
        self.deferred: dict[str, int] = {}
        """How many times batches deferred each buffered message, by id (``MAX_DEFERRALS``)."""
        self.in_flight = 0
        self.flush_entry: Any = None
        self.flushing = False
        self.retired = False

    # Receiving, as celery.worker.strategy.default does, but into the buffer.

    def on_message(
        self, message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **options: Any
    ) -> None:
        if self.rate_limited():
            self.one_by_one(message, body, ack, reject, callbacks, **options)
            return
        app = self.app
        if body is None and "args" not in message.payload:
            body, headers, decoded, utc = (
                message.body,
                message.headers,
                False,
                app.uses_utc_timezone(),
            )
        elif "args" in message.payload:
            body, headers, decoded, utc = hybrid_to_proto2(message, message.payload)
        else:
            body, headers, decoded, utc = proto1_to_proto2(message, body)
        request = self.request_class(
            message,
            on_ack=ack,
            on_reject=reject,
            app=app,
            hostname=self.hostname,
            eventer=self.eventer,
            task=self.task,
            connection_errors=self.consumer.connection_errors,
            body=body,
            headers=headers,
            decoded=decoded,
            utc=utc,
        )
        if (request.expires or request.id in self.revoked) and request.revoked():
            return
        signals.task_received.send(sender=self.consumer, request=request)
        if request.eta:
            # A retry's countdown: held (unacknowledged, not counted against the prefetch
            # limit) until due, as Celery holds it.
            try:
                if request.utc:
                    eta = to_timestamp(timezone.to_system(request.eta))  # type: ignore[no-untyped-call]
                else:
                    eta = to_timestamp(request.eta, app.timezone)  # type: ignore[no-untyped-call]
            except (OverflowError, ValueError) as error:
                log.error("message with an unreadable ETA dropped: %r", error)
                request.reject(requeue=False)
                return
            self.consumer.qos.increment_eventually()
            request._eta_timer_entry = self.timer.call_at(eta, self._due, (request,), priority=6)
            task_scheduled(request)
            return
        task_reserved(request)
        if callbacks:
            for callback in callbacks:
                callback(request)
        self.add(request)

    def rate_limited(self) -> bool:
        consumer = self.consumer
        return not consumer.disable_rate_limits and bool(consumer.task_buckets[self.task.name])

    def _due(self, request: Any) -> None:
        task_reserved(request)
        self.consumer.qos.decrement_eventually()
        self.add(request)

    # Buffering and flushing.

    def add(self, request: Any) -> None:
        if self.retired:
            return
        self.buffer.append(request)
        self.flush(idle_only=True)

    def flush(self, *, idle_only: bool) -> None:
        """Hand buffered messages to the pool:

        - at once while a pool process is idle (so an event waits for nothing but a busy pool);
        - full batches, always;
        - everything once the flush interval has passed (``idle_only`` False).

        Otherwise, while every pool process applies a batch, the next batches grow in the buffer:
        batches stay small when traffic is light and fill up under load, which is what makes
        both the database work and this process's share of it cheap.
        """
        if self.flushing or self.retired:
            return
        self.flushing = True
        try:
            while self.buffer and (
                len(self.buffer) >= self.batch_size
                or not idle_only
                or self.in_flight < self._processes()
            ):
                batch = self.buffer[: self.batch_size]
                del self.buffer[: self.batch_size]
                self._submit(batch)
        finally:
            self.flushing = False
        if self.buffer and self.flush_entry is None:
            self.flush_entry = self.timer.call_after(self.flush_interval, self._on_flush_timer)
        elif not self.buffer and self.flush_entry is not None:
            self.timer.cancel(self.flush_entry)
            self.flush_entry = None

    def _on_flush_timer(self) -> None:
        self.flush_entry = None
        self.flush(idle_only=False)

    def _processes(self) -> int:
        try:
            return max(1, int(self.pool.num_processes))
        except (AttributeError, TypeError, ValueError):
            return 1

    def retire(self) -> None:
        """The consumer restarted (a new connection): what is buffered belongs to the old
        channel and comes back from the broker."""
        self.retired = True
        for request in self.buffer:
            task_ready(request)
        self.buffer.clear()
        self.deferred.clear()
        if self.flush_entry is not None:
            self.timer.cancel(self.flush_entry)
            self.flush_entry = None

    def _submit(self, requests: list[Any]) -> None:
        items = []
        valid = []
        for request in requests:
            # Revoked while it waited for its countdown or in the buffer: ``revoked()`` answers
            # it as Celery does (acknowledged, a task-revoked event).
            if (request.expires or request.id in self.revoked) and request.revoked():
                continue
            # Before anything is applied: a message whose MAC does not check out is forged.
            args = message_args(request)
            if not self.check(request.id, args) or args is None:
                self._finish_forged(request, args)
                continue
            items.append(batch_item(request, args))
            valid.append(request)
        if not items:
            return
        # A batch takes the free locks and defers the events whose locks another batch holds;
        # deferred events come back here, and once one has been deferred MAX_DEFERRALS times,
        # its next batch waits for its locks: no event waits forever behind busy neighbours.
        wait_for_locks = any(self.deferred.get(request.id, 0) >= MAX_DEFERRALS for request in valid)
        log.debug("batch handed to the pool", extra={"events": len(items)})
        self.in_flight += 1
        try:
            result = self.pool.apply_async(
                run_batch,
                args=(self.task.batch_runtime, items, wait_for_locks),
                accept_callback=partial(self._on_accepted, valid),
                callback=partial(
                    self._on_return, valid, [item.svix_id for item in items], time.monotonic()
                ),
                error_callback=partial(self._on_error, valid),
                correlation_id=valid[0].id,
            )
        except Exception:
            self.in_flight -= 1
            log.exception("batch not handed to the pool; its messages go back on the queue")
            for request in valid:
                task_ready(request)
                request.reject(requeue=True)
            return
        if result is None:
            # The pool is closing (shutdown): nothing is acknowledged, the broker gets these
            # messages back when the connection closes.
            self.in_flight -= 1

    # Results, in the main process: acknowledge only now that the outcomes are committed.

    def _on_accepted(self, requests: list[Any], pid: int, time_accepted: float) -> None:
        for request in requests:
            # What Request.on_accepted does, but the task-started event: see _announce.
            request.worker_pid = pid
            request.time_start = time.time() - (time.monotonic() - time_accepted)
            task_accepted(request)

    def _on_return(
        self, requests: list[Any], svix_ids: list[str], submitted: float, outcomes: Any
    ) -> None:
        self.in_flight -= 1
        runtime = time.monotonic() - submitted
        try:
            finished = sorted(
                {
                    svix_id
                    for svix_id, outcome in zip(svix_ids, outcomes, strict=True)
                    if outcome in FINAL_OUTCOMES
                }
            )
            settled = list(zip(requests, outcomes, strict=True))
            again = [request for request, outcome in settled if outcome == EventStatus.DEFERRED]
            settled = [
                (request, outcome)
                for request, outcome in settled
                if outcome != EventStatus.DEFERRED
            ]
            acknowledge_all(
                [request for request, outcome in settled if outcome != EventStatus.REQUEUE],
                forget=finished,
                ledger=self.ledger,
            )
            self._announce([request for request, _ in settled])
            for request, outcome in settled:
                self.deferred.pop(request.id, None)
                settle(request, outcome, runtime)
            if self.retired:
                # The old channel's messages come back from the broker.
                for request in again:
                    task_ready(request)
            elif again:
                log.debug("events deferred to the next batch", extra={"events": len(again)})
                for request in again:
                    self.deferred[request.id] = self.deferred.get(request.id, 0) + 1
                self.buffer[:0] = again
        finally:
            self.flush(idle_only=True)

    def _on_error(self, requests: list[Any], exc_info: Any) -> None:
        """The pool process died with the batch (``WorkerLostError``): Celery's own handling
        of each request re-queues its message (``task_reject_on_worker_lost``)."""
        self.in_flight -= 1
        try:
            self._announce(requests)
            for request in requests:
                self.deferred.pop(request.id, None)
                request.on_failure(exc_info)
        finally:
            self.flush(idle_only=True)

    def _announce(self, requests: list[Any]) -> None:
        """The task-received events of a batch, sent when it returns, just before each
        message's outcome: Celery publishes the task events waiting in its buffer together, so a
        batch's events cost one message, where announcing each message on arrival (and its
        start) would cost one each at low traffic. Monitors (Flower) see each task received and
        then succeeded, retried or failed."""
        if not self.events_enabled:
            return
        for request in requests:
            self.eventer.send(
                "task-received",
                uuid=request.id,
                name=request.name,
                args=request.argsrepr,
                kwargs=request.kwargsrepr,
                root_id=request.root_id,
                parent_id=request.parent_id,
                retries=request.request_dict.get("retries", 0),
                eta=request.eta and request.eta.isoformat(),
                expires=request.expires and request.expires.isoformat(),
            )

    def _finish_forged(self, request: Any, args: Any) -> None:
        """A forged message (recorded as such by the check): acknowledged, never applied, and
        a failed task in Flower, its arguments shown without their payload."""
        task_ready(request)
        request.acknowledge()
        if self.events_enabled:
            self.eventer.send(
                "task-received",
                uuid=request.id,
                name=request.name,
                args=forged_argsrepr(args[0] if args else None),
                kwargs="{}",
                retries=0,
            )
        request.send_event(
            "task-failed",
            exception=repr(ForgedMessageError("its MAC does not check out; not applied")),
            traceback="",
        )
