"""The end of a batch's messages in the worker's main process: acknowledged together, in one
Redis round trip with their ledger entries (``acknowledge_all``), then Celery's bookkeeping and
task events for each (``settle``), as Celery does for a task that returned."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from celery.worker.state import task_ready
from kombu.transport.redis import QoS as RedisQoS
from kombu.transport.virtual import QoS as VirtualQoS

from clerk_sync.broker.batch_items import DeadLetter
from clerk_sync.core.queue import BROKER_ERRORS, Ledger
from models.events import EventStatus

log = logging.getLogger("clerk_sync.worker")


def settle(request: Any, outcome: str, runtime: float) -> None:
    """Celery's bookkeeping and task events (Flower) for one message whose batch returned;
    acknowledged already, unless it goes back on the queue."""
    if outcome == EventStatus.REQUEUE:
        task_ready(request)
        request.reject(requeue=True)
    elif outcome == EventStatus.RETRY:
        task_ready(request)
        request.acknowledge()
        request.send_event("task-retried", exception="retried with a backoff", traceback="")
    elif outcome == EventStatus.FAILED:
        task_ready(request)
        request.acknowledge()
        request.send_event("task-failed", exception="see the worker log", traceback="")
    elif outcome == EventStatus.DEAD:
        # Dead-lettered (committed as ``dead``, its ledger entry dropped): a failed task in
        # Flower, with the error's class and message (no payload), not a success.
        task_ready(request)
        request.acknowledge()
        request.send_event("task-failed", exception=dead_letter_exception(outcome), traceback="")
    else:
        # applied, skipped (or a second copy of an event): what Request.on_success does for a
        # task that returned this result.
        task_ready(request, successful=True)
        request.acknowledge()
        request.send_event("task-succeeded", result=outcome, runtime=runtime)


def dead_letter_exception(outcome: str) -> str:
    """The ``exception`` of a dead letter's task-failed event, as a single-event task's would
    read (``workers.dead_letters.DeadLetterError``): ``DeadLetterError('Type: message')``."""
    reason = outcome.reason if isinstance(outcome, DeadLetter) else "see clerk-sync events show"
    return f"DeadLetterError({reason!r})"


def acknowledge_all(
    requests: Sequence[Any], *, forget: Sequence[str] = (), ledger: Ledger | None = None
) -> None:
    """Acknowledge many messages, and drop the ledger entries of the events in ``forget`` (their
    outcomes are committed), in one Redis round trip.

    kombu's Redis transport acknowledges a message by removing its delivery tag from the
    ``unacked`` hash and index, one pipeline per message; this does the same for all the tags
    of a batch with one ``ZREM`` and one ``HDEL``, then records each message as acknowledged as
    ``Message.ack`` would; the ledger's ``ZREM`` and ``HDEL`` go in the same pipeline (the
    ledger lives beside the queue). Messages of another transport, or any surprise, go through
    ``Request.acknowledge`` one by one, and the ledger on its own. If Redis cannot be reached the
    messages stay unacknowledged (as a failed ack leaves them) and come back after the
    visibility timeout, to be ignored as duplicates; the sweeper drops the ledger entries.
    """
    pending = [request for request in requests if not request.acknowledged]
    channel = pending[0]._message.channel if pending else None
    qos = getattr(channel, "qos", None)
    if (
        channel is None
        or not isinstance(qos, RedisQoS)
        or channel.no_ack_consumers
        or channel.global_keyprefix
        or any(request._message.channel is not channel for request in pending)
    ):
        for request in pending:
            request.acknowledge()
        _forget(ledger, forget)
        return
    tags = [request._message.delivery_tag for request in pending]
    try:
        with channel.conn_or_acquire() as client:
            # kombu's QoS._remove_from_indices, for all the tags in one ZREM and one HDEL.
            pipeline = client.pipeline()
            pipeline.zrem(qos.unacked_index_key, *tags)
            pipeline.hdel(qos.unacked_key, *tags)
            if ledger is not None:
                ledger.forget_in(pipeline, forget)
            pipeline.execute()
    except channel.connection_errors as error:
        log.critical("Couldn't ack %d messages, reason:%r", len(tags), error, exc_info=True)
        return
    except Exception:
        log.exception("acknowledging a batch at once failed; acknowledging one by one")
        for request in pending:
            request.acknowledge()
        _forget(ledger, forget)
        return
    for request, tag in zip(pending, tags, strict=True):
        VirtualQoS.ack(qos, tag)  # type: ignore[no-untyped-call]
        request._message._state = "ACK"
        request.acknowledged = True


def _forget(ledger: Ledger | None, svix_ids: Sequence[str]) -> None:
    """Drop ledger entries on their own. If Redis is unreachable just now, the sweeper finds the
    entries later and drops them."""
    if ledger is None or not svix_ids:
        return
    try:
        ledger.forget(svix_ids)
    except BROKER_ERRORS:
        log.warning("ledger: entries not dropped; the sweeper will", extra={"events": svix_ids})
