"""Task messages published to RabbitMQ, each confirmed by the broker before ``publish``
returns (the ingress's ``202``, a worker's retry, ``events replay``).

Public APIs only: Celery's ``send_task`` builds and routes the message (to the quorum queue
declared by ``clerk_sync.core.rabbitmq``, or for a countdown through Celery's native delayed
delivery), on a kombu producer of a connection this module keeps per thread (and process). The
connection's channels are in confirm mode (``confirm_publish``), so kombu's publish waits for
RabbitMQ's ``basic.ack`` (a ``basic.nack`` raises) at most ``confirm_timeout`` seconds.

A connection that failed in any way is closed and replaced by the next publish: py-amqp waits
for "the next" confirm, not for a given delivery tag, so a confirm that arrived late on a
connection still in use would be taken for the next message's.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any

from celery import Celery
from kombu.connection import Connection
from kombu.messaging import Producer

from clerk_sync.core.queue import APPLY_EVENT_TASK, QueuedEvent
from clerk_sync.core.rabbitmq import CONFIRMED
from clerk_sync.core.settings import Settings

_forks = [0]


def _count_fork() -> None:
    _forks[0] += 1


os.register_at_fork(after_in_child=_count_fork)


class ConfirmedPublishing:
    """``send_task`` on one confirm-mode connection per thread, failing fast: no kombu retry
    loop, a timeout on connecting, writing and waiting for the confirm."""

    def __init__(self, settings: Settings, celery_app: Celery) -> None:
        self._celery = celery_app
        self._queue = settings.queue_name
        self._timeout = settings.broker_publish_timeout_seconds
        self._local = threading.local()

    def send(
        self,
        event: QueuedEvent,
        *,
        task_id: str | None = None,
        retries: int = 0,
        countdown: float | None = None,
    ) -> None:
        """Return once RabbitMQ confirmed the message; raise (one of ``BROKER_ERRORS``)
        otherwise, after closing the connection. A connection kept from an earlier publish
        may have died meanwhile (RabbitMQ restarted): then the message goes once more on a new
        one (a copy, should the first have arrived after all, is ignored by the workers)."""
        fresh = not self._has_producer()
        while True:
            producer = self._producer()
            try:
                self._celery.send_task(
                    APPLY_EVENT_TASK,
                    args=event.task_args(),
                    queue=self._queue,
                    task_id=task_id,
                    retries=retries,
                    countdown=countdown,
                    argsrepr=event.argsrepr(),
                    producer=producer,
                    retry=False,
                    timeout=self._timeout,
                    confirm_timeout=self._timeout,
                )
            except BaseException:
                self._discard()
                if fresh:
                    raise
                fresh = True
                continue
            return

    def ping(self) -> None:
        """Connect (or check the thread's connection): raises when RabbitMQ does not answer."""
        try:
            connection = self._producer().connection
            connection.ensure_connection(max_retries=1, timeout=self._timeout)
        except BaseException:
            self._discard()
            raise

    def _has_producer(self) -> bool:
        local = self._local
        return getattr(local, "process", None) == _forks[0] and local.producer is not None

    def _producer(self) -> Producer:
        local = self._local
        if not self._has_producer():
            conf = self._celery.conf
            connection = Connection(  # type: ignore[no-untyped-call]
                conf.broker_url,
                transport_options={**conf.broker_transport_options, **CONFIRMED},
                connect_timeout=self._timeout,
                heartbeat=0,
            )
            # One attempt, bounded by the timeout (kombu's default channel would keep trying).
            connection.connect()  # type: ignore[no-untyped-call]
            local.producer = Producer(connection, auto_declare=False)  # type: ignore[no-untyped-call]
            local.process = _forks[0]
        producer: Producer = local.producer
        return producer

    def _discard(self) -> None:
        producer: Any = getattr(self._local, "producer", None)
        self._local.producer = None
        if producer is not None and getattr(self._local, "process", None) == _forks[0]:
            # Without AMQP's closing handshake: a blocked or dead broker would never answer it.
            with contextlib.suppress(Exception):
                producer.connection.collect()
