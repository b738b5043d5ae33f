"""The queue contract between ingress and workers, and the ledger of accepted events.

The ingress publishes an ordinary Celery task message naming ``APPLY_EVENT_TASK`` with arguments
``(svix_id, payload, received_at_ms)``; it never imports the worker code. Before publishing, it
writes the event to a ledger in Redis, and the worker removes it only after the event's outcome is
committed. kombu's Redis transport can lose a message taken by a worker that dies before recording
it as unacknowledged; the ledger sweeper re-publishes whatever stays in the ledger too long.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import redis
from celery import Celery
from kombu.exceptions import OperationalError as KombuOperationalError

from clerk_sync.settings import Settings

APPLY_EVENT_TASK: Final = "clerk_sync.apply_event"
SWEEP_LEDGER_TASK: Final = "clerk_sync.sweep_ledger"
LEDGER_DUE_KEY: Final = "clerk-sync:ledger:due"
LEDGER_MESSAGES_KEY: Final = "clerk-sync:ledger:messages"


BROKER_ERRORS: Final = (KombuOperationalError, redis.RedisError, OSError)
"""What a broker that is down or unreachable raises (socket errors are ``OSError``)."""


class BrokerUnavailableError(RuntimeError):
    """The event could not be handed to the broker; it must not be acknowledged."""


@dataclass(frozen=True)
class QueuedEvent:
    svix_id: str
    payload: str
    received_at_ms: int

    def task_args(self) -> list[Any]:
        return [self.svix_id, self.payload, self.received_at_ms]


def broker_configuration(settings: Settings) -> dict[str, Any]:
    """Celery settings both sides must agree on (broker, queue, timeouts)."""
    transport_options: dict[str, Any]
    if settings.broker_url.startswith("filesystem://"):
        transport_options = {
            "data_folder_in": settings.broker_filesystem_dir,
            "data_folder_out": settings.broker_filesystem_dir,
            "processed_folder": settings.broker_filesystem_dir,
            "store_processed": False,
        }
    else:
        transport_options = {
            "visibility_timeout": settings.visibility_timeout_seconds,
            # kombu scans for unacknowledged tasks of vanished workers every interval x throttle
            # seconds (10 x 10 by default); scan every 10 s so they return soon after the timeout.
            "unacked_restore_throttle": 1,
            "socket_connect_timeout": settings.broker_publish_timeout_seconds,
            "socket_timeout": max(settings.broker_publish_timeout_seconds, 5.0),
        }
    return {
        "broker_url": settings.broker_url,
        "broker_transport_options": transport_options,
        "broker_connection_timeout": settings.broker_publish_timeout_seconds,
        "broker_connection_retry_on_startup": True,
        "task_default_queue": settings.queue_name,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_backend": None,
        "task_ignore_result": True,
    }


class Ledger:
    """Accepted-but-not-yet-committed events, kept in Redis beside the queue."""

    def __init__(self, client: redis.Redis[bytes]) -> None:
        self._client = client

    @classmethod
    def for_settings(cls, settings: Settings) -> Ledger | None:
        if not settings.uses_redis_broker:
            return None
        return cls(
            redis.Redis.from_url(
                settings.broker_url,
                socket_connect_timeout=settings.broker_publish_timeout_seconds,
                socket_timeout=max(settings.broker_publish_timeout_seconds, 5.0),
            )
        )

    def remember(self, event: QueuedEvent, due_at: float) -> None:
        pipeline = self._client.pipeline(transaction=True)
        pipeline.hset(
            LEDGER_MESSAGES_KEY,
            event.svix_id,
            json.dumps([event.payload, event.received_at_ms]),
        )
        pipeline.zadd(LEDGER_DUE_KEY, {event.svix_id: due_at})
        pipeline.execute()

    def forget(self, svix_ids: Sequence[str]) -> None:
        if not svix_ids:
            return
        pipeline = self._client.pipeline(transaction=True)
        pipeline.zrem(LEDGER_DUE_KEY, *svix_ids)
        pipeline.hdel(LEDGER_MESSAGES_KEY, *svix_ids)
        pipeline.execute()

    def overdue(self, now: float, limit: int) -> list[QueuedEvent]:
        svix_ids = [
            member.decode() if isinstance(member, bytes) else str(member)
            for member in self._client.zrangebyscore(LEDGER_DUE_KEY, 0, now, start=0, num=limit)
        ]
        if not svix_ids:
            return []
        events = []
        for svix_id, stored in zip(
            svix_ids, self._client.hmget(LEDGER_MESSAGES_KEY, svix_ids), strict=True
        ):
            if stored is None:
                self._client.zrem(LEDGER_DUE_KEY, svix_id)
                continue
            payload, received_at_ms = json.loads(stored)
            events.append(QueuedEvent(svix_id, payload, int(received_at_ms)))
        return events

    def postpone(self, svix_id: str, due_at: float) -> None:
        self._client.zadd(LEDGER_DUE_KEY, {svix_id: due_at}, xx=True)

    def size(self) -> int:
        return int(self._client.zcard(LEDGER_DUE_KEY))

    def ping(self) -> bool:
        return bool(self._client.ping())


class Publisher:
    """Hands verified events to the broker as Celery task messages, recording them in the ledger
    first so that an acknowledged event is never only in a worker's memory."""

    def __init__(self, settings: Settings, celery_app: Celery | None = None) -> None:
        self._settings = settings
        if celery_app is None:
            celery_app = Celery("clerk_sync_ingress", set_as_current=False)
            celery_app.conf.update(broker_configuration(settings))
        self._celery = celery_app
        self.ledger = Ledger.for_settings(settings)

    def publish(self, event: QueuedEvent) -> None:
        """Return once the broker holds the message, else raise ``BrokerUnavailableError``."""
        try:
            if self.ledger is not None:
                self.ledger.remember(
                    event, time.time() + self._settings.ledger_redeliver_after_seconds
                )
            self.send(event)
        except BROKER_ERRORS as error:
            raise BrokerUnavailableError(type(error).__name__) from error

    def send(self, event: QueuedEvent) -> None:
        """Publish the task message alone (the sweeper re-sends events already in the ledger)."""
        self._celery.send_task(
            APPLY_EVENT_TASK,
            args=event.task_args(),
            queue=self._settings.queue_name,
            # What Celery's logs and Flower show instead of the arguments: the payload holds
            # names and email addresses.
            argsrepr=f"({event.svix_id!r}, <payload of {len(event.payload)} characters>, "
            f"{event.received_at_ms})",
            retry=True,
            retry_policy={"max_retries": 1, "interval_start": 0, "interval_step": 0.2},
        )

    def ping(self) -> bool:
        """Whether the broker answers now (for ``/readyz``)."""
        try:
            if self.ledger is not None:
                return self.ledger.ping()
            with self._celery.connection_for_write() as connection:
                connection.ensure_connection(
                    max_retries=1, timeout=self._settings.broker_publish_timeout_seconds
                )
        except BROKER_ERRORS:
            return False
        return True
