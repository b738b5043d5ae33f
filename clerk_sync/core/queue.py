"""The queue contract between the ingress and the workers, and the ledger of accepted events.

The ingress publishes an ordinary Celery task message (protocol 2) naming ``APPLY_EVENT_TASK``
with arguments ``(svix_id, payload, received_at_ms, mac)``, the last a MAC of the first three
(``clerk_sync.core.message_auth``) without which no worker applies it; neither side imports the
other. On a
Redis broker the message goes out in the same transaction that writes the event to the ledger
(``clerk_sync.broker.publisher``), so an accepted event is always both queued and in the ledger;
the worker removes it from the ledger only after the event's outcome is committed. kombu's Redis
transport can lose a message taken by a worker that dies before recording it as unacknowledged;
the ledger sweeper re-publishes whatever stays in the ledger too long.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import amqp.exceptions
import orjson
import redis
from kombu.exceptions import OperationalError as KombuOperationalError

from clerk_sync.core import ledger_scripts as scripts
from clerk_sync.core import rabbitmq
from clerk_sync.core.ledger_scripts import Acceptance
from clerk_sync.core.sentinel import is_sentinel_url, master_client
from clerk_sync.core.settings import Settings
from models.payload_hash import payload_hash

APPLY_EVENT_TASK: Final = "clerk_sync.apply_event"
SWEEP_LEDGER_TASK: Final = "clerk_sync.sweep_ledger"
LEDGER_DUE_KEY: Final = "clerk-sync:ledger:due"
LEDGER_MESSAGES_KEY: Final = "clerk-sync:ledger:messages"


BROKER_ERRORS: Final = (
    KombuOperationalError,
    redis.RedisError,
    OSError,
    amqp.exceptions.AMQPError,
    amqp.exceptions.MessageNacked,
)
"""What a broker that is down or unreachable raises (socket errors are ``OSError``; RabbitMQ's
refusals and negative confirms are py-amqp's)."""


class BrokerUnavailableError(RuntimeError):
    """The event could not be handed to the broker; it must not be acknowledged."""


@dataclass(frozen=True)
class QueuedEvent:
    svix_id: str
    payload: str
    received_at_ms: int
    event_type: str | None = None
    """Shown in Flower and Celery's logs (``argsrepr``) when the publisher knows it."""
    mac: str = ""
    """The arguments' MAC (``clerk_sync.core.message_auth``), set by the publisher that signs
    the message; a worker applies no message without a valid one."""

    def task_args(self) -> list[Any]:
        """The task's arguments: ``(svix_id, payload, received_at_ms, mac)``."""
        return [self.svix_id, self.payload, self.received_at_ms, self.mac]

    def signed(self, mac: str) -> QueuedEvent:
        return QueuedEvent(self.svix_id, self.payload, self.received_at_ms, self.event_type, mac)

    def argsrepr(self) -> str:
        """What Celery's logs and Flower show instead of the arguments: the svix id and event
        type, never the payload (it holds names and email addresses) nor the MAC."""
        event_type = (self.event_type or "?")[:64]
        return f"({self.svix_id!r}, {event_type!r}, <payload of {len(self.payload)} characters>)"


def broker_configuration(settings: Settings) -> dict[str, Any]:
    """Celery settings both sides must agree on (broker, queue, timeouts)."""
    transport_options: dict[str, Any]
    if settings.uses_amqp_broker:
        transport_options = rabbitmq.transport_options(settings)
    elif settings.broker_url.startswith("filesystem://"):
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
        if is_sentinel_url(settings.broker_url):
            transport_options["master_name"] = settings.sentinel_master
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
        **(rabbitmq.celery_settings(settings) if settings.uses_amqp_broker else {}),
    }


def redis_client(settings: Settings, socket_timeout: float | None = None) -> redis.Redis[bytes]:
    """A client of the broker's Redis (with Sentinel: of its master, found anew by each new
    connection) with the publish timeouts (a pool of connections, thread-safe, reset by
    redis-py in a forked child)."""
    connect_timeout = settings.broker_publish_timeout_seconds
    timeout = socket_timeout or max(settings.broker_publish_timeout_seconds, 5.0)
    if is_sentinel_url(settings.broker_url):
        return master_client(
            settings.broker_url,
            settings.sentinel_master,
            socket_connect_timeout=connect_timeout,
            socket_timeout=timeout,
        )
    return redis.Redis.from_url(
        settings.broker_url, socket_connect_timeout=connect_timeout, socket_timeout=timeout
    )


class Ledger:
    """Accepted-but-not-yet-committed events, kept in Redis beside the queue."""

    def __init__(self, client: redis.Redis[bytes]) -> None:
        self._client = client

    @classmethod
    def for_settings(cls, settings: Settings) -> Ledger | None:
        if not settings.uses_redis_broker:
            return None
        return cls(redis_client(settings))

    @property
    def client(self) -> redis.Redis[bytes]:
        return self._client

    @staticmethod
    def accept(
        event: QueuedEvent,
        due_at: float,
        message: tuple[str, str],
        run: Callable[[tuple[Any, ...]], Any],
        *,
        replay: bool = False,
        replicated: bool = False,
    ) -> Acceptance:
        """Write the ledger entry and push the task ``message`` (queue list, raw message) in
        one round trip (``ThreadConnections.run``) of one Lua script, which Redis runs without
        interleaving another client's command: no worker can take the message before its
        entry is in the ledger. An svix id in the ledger or
        finished recently is not queued again (``clerk_sync.core.ledger_scripts``), unless
        this is a ``replay``. ``replicated``: the caller waits for a replica after the script
        (``WAIT``), so a copy or conflict also writes (the hash it found, again), and a replica
        confirming it confirms the first acceptance too (replication keeps the order)."""
        queue_key, raw_message = message
        keys = (
            LEDGER_MESSAGES_KEY,
            LEDGER_DUE_KEY,
            scripts.LEDGER_HASHES_KEY,
            scripts.LEDGER_CONFLICTS_KEY,
            queue_key,
        )
        entry = _ledger_entry(event)
        arguments = (
            event.svix_id,
            entry,
            due_at,
            payload_hash(event.payload),
            raw_message,
            "1" if replay else "0",
            *(("1",) if replicated else ()),
        )
        try:
            reply = run(("EVALSHA", scripts.ACCEPT_SHA, len(keys), *keys, *arguments))
        except redis.ResponseError as error:
            # Once per Redis (and after a restart or SCRIPT FLUSH): EVAL caches the script.
            if not isinstance(error, redis.exceptions.NoScriptError):
                raise
            reply = run(("EVAL", scripts.ACCEPT, len(keys), *keys, *arguments))
        return Acceptance(int(reply))

    def forget(self, svix_ids: Sequence[str]) -> None:
        if not svix_ids:
            return
        pipeline = self._client.pipeline(transaction=True)
        self.forget_in(pipeline, svix_ids)
        pipeline.execute()

    @staticmethod
    def forget_in(pipeline: Any, svix_ids: Sequence[str]) -> None:
        """Queue ``forget``'s commands on a pipeline of another client of the same Redis (the
        worker's acknowledgements), to run in its round trip: one script that drops the
        entries and remembers them as finished (``clerk_sync.core.ledger_scripts``)."""
        if svix_ids:
            keys = (
                LEDGER_DUE_KEY,
                LEDGER_MESSAGES_KEY,
                scripts.LEDGER_REDELIVERIES_KEY,
                scripts.LEDGER_HASHES_KEY,
                scripts.LEDGER_FINISHED_KEY,
            )
            remember = scripts.REMEMBER_FINISHED_SECONDS
            pipeline.eval(scripts.FORGET, len(keys), *keys, remember, *svix_ids)

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
            payload, received_at_ms, *signed = json.loads(stored)
            mac = signed[0] if signed and isinstance(signed[0], str) else ""
            events.append(QueuedEvent(svix_id, payload, int(received_at_ms), mac=mac))
        return events

    def postpone(self, svix_id: str, due_at: float) -> None:
        self._client.zadd(LEDGER_DUE_KEY, {svix_id: due_at}, xx=True)

    def redeliveries(self, svix_id: str) -> int:
        """How often the sweeper re-published the event."""
        return int(self._client.hget(scripts.LEDGER_REDELIVERIES_KEY, svix_id) or 0)

    def redelivered(self, svix_id: str, due_at: float) -> None:
        """The sweeper re-published the event: count it, and postpone it to ``due_at``."""
        pipeline = self._client.pipeline(transaction=True)
        pipeline.zadd(LEDGER_DUE_KEY, {svix_id: due_at}, xx=True)
        pipeline.hincrby(scripts.LEDGER_REDELIVERIES_KEY, svix_id, 1)
        pipeline.execute()

    def conflicts(self, limit: int) -> list[tuple[bytes, QueuedEvent]]:
        """Up to about ``limit`` bodies the ingress set aside (another body under an svix id it
        held), each with its key for ``drop_conflicts``."""
        _cursor, found = self._client.hscan(scripts.LEDGER_CONFLICTS_KEY, 0, count=limit)
        conflicts = []
        for key, stored in found.items():
            svix_id = key.decode().rsplit("\n", 1)[0]
            payload, received_at_ms, *_signed = json.loads(stored)
            conflicts.append((key, QueuedEvent(svix_id, payload, int(received_at_ms))))
        return conflicts

    def drop_conflicts(self, keys: Sequence[bytes]) -> None:
        if keys:
            self._client.hdel(scripts.LEDGER_CONFLICTS_KEY, *keys)

    def size(self) -> int:
        return int(self._client.zcard(LEDGER_DUE_KEY))

    def ping(self) -> bool:
        return bool(self._client.ping())


@dataclass(frozen=True)
class QueueStatus:
    """What ``clerk-sync status`` shows of a Redis broker."""

    depth: int
    """Messages waiting in the queue's list."""
    ledger_size: int
    """Events accepted and not yet finished."""
    next_due: str | None
    """The ledger entry due next: the one waiting longest since it was last published."""
    next_due_received_at_ms: int | None
    """When ``next_due`` was received (None if its entry is gone meanwhile)."""


def queue_status(settings: Settings) -> QueueStatus:
    """LLEN of the queue, ZCARD of the ledger, and the entry due next with its receipt time,
    read from the broker's Redis; broker errors propagate."""
    client = redis_client(settings)
    try:
        depth = int(client.llen(settings.queue_name))
        size = int(client.zcard(LEDGER_DUE_KEY))
        first = client.zrange(LEDGER_DUE_KEY, 0, 0)
        next_due: str | None = None
        received_at_ms: int | None = None
        if first:
            next_due = first[0].decode()
            stored = client.hget(LEDGER_MESSAGES_KEY, next_due)
            if stored is not None:
                received_at_ms = int(json.loads(stored)[1])
    finally:
        client.close()
    return QueueStatus(depth, size, next_due, received_at_ms)


def _ledger_entry(event: QueuedEvent) -> bytes:
    """``[payload, received_at_ms, mac]``: the sweeper re-publishes an entry only if its MAC
    checks out, so that writing to the ledger is no way round the workers' check."""
    return orjson.dumps([event.payload, event.received_at_ms, event.mac])
