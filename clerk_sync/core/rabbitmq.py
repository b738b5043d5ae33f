"""The queue contract on RabbitMQ: a durable quorum queue, every publish confirmed.

A quorum queue (RabbitMQ 3.8 or newer) is replicated with Raft and writes each message to disk
(``fsync``) on a majority of its members before the broker confirms it; with publisher
confirms (kombu's ``confirm_publish`` transport option, ``CONFIRMED``) a publish returns only
once RabbitMQ confirmed it. So a ``202`` of the ingress means the broker holds the message
durably: no ledger is kept beside a RabbitMQ queue (``docs/architecture.md``, delivery
guarantees).

The queue is declared through Celery's ``task_queues`` (``queue_arguments``) by every side, the
same way (RabbitMQ refuses a declaration that differs from the queue's). Its exchange is a
topic exchange, which Celery's native delayed delivery needs for a retry's countdown on a
quorum queue (quorum queues have no global QoS, so a worker cannot hold countdowns beyond its
prefetch count, as it does on Redis).
"""

from __future__ import annotations

from typing import Any, Final

from kombu.entity import Exchange, Queue

from clerk_sync.core.settings import Settings

QUORUM: Final = {"x-queue-type": "quorum"}


def task_queue(settings: Settings) -> Queue:
    """The queue of ``clerk_sync.apply_event``: durable, quorum, bound to a topic exchange of
    its own name by its own name."""
    exchange = Exchange(settings.queue_name, type="topic", durable=True)  # type: ignore[no-untyped-call]
    return Queue(  # type: ignore[no-untyped-call]
        settings.queue_name,
        exchange,
        routing_key=settings.queue_name,
        durable=True,
        queue_arguments=dict(QUORUM),
    )


CONFIRMED: Final = {"confirm_publish": True}
"""kombu's py-amqp transport option that puts a connection's channels in confirm mode: set on
the connections of ``clerk_sync.broker.confirmed`` (the ingress's publishes, the workers'
retries, ``events replay``), not on Celery's own: a worker's task events (a few per message,
for Flower) need no confirm, and waiting for one each costs the worker most of its speed."""


def transport_options(settings: Settings) -> dict[str, Any]:
    """kombu's py-amqp transport, as Celery's connections use it."""
    del settings
    return {}


def celery_settings(settings: Settings) -> dict[str, Any]:
    """The Celery settings that declare and route to the quorum queue."""
    return {
        "task_queues": (task_queue(settings),),
        "task_default_exchange": settings.queue_name,
        "task_default_exchange_type": "topic",
        "task_default_routing_key": settings.queue_name,
        "task_create_missing_queues": False,
        "broker_native_delayed_delivery_queue_type": "quorum",
        "worker_detect_quorum_queues": True,
    }
