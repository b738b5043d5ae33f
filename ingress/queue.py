"""The queue contract between ingress and workers, and the ledger of accepted events.

The ingress publishes an ordinary Celery task message (protocol 2) naming ``APPLY_EVENT_TASK``
with arguments ``(svix_id, payload, received_at_ms)``; it never imports the worker code. On a
Redis broker the message goes out in the same transaction (``MULTI``/``EXEC``) that writes the
event to a ledger, so an accepted event is always both queued and in the ledger (one round trip);
the worker removes it from the ledger only after the event's outcome is committed. kombu's Redis
transport can lose a message taken by a worker that dies before recording it as unacknowledged;
the ledger sweeper re-publishes whatever stays in the ledger too long.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from random import getrandbits
from typing import Any, Final

import orjson
import redis
from celery import Celery
from celery.utils.nodenames import anon_nodename
from hiredis import pack_command
from kombu import serialization as kombu_serialization
from kombu.connection import Connection
from kombu.exceptions import OperationalError as KombuOperationalError
from kombu.utils.json import dumps as kombu_json_dumps
from kombu.utils.uuid import uuid

from clerk_sync.settings import Settings
from ingress.sockets import kernel_timeout

APPLY_EVENT_TASK: Final = "clerk_sync.apply_event"
SWEEP_LEDGER_TASK: Final = "clerk_sync.sweep_ledger"
LEDGER_DUE_KEY: Final = "clerk-sync:ledger:due"
LEDGER_MESSAGES_KEY: Final = "clerk-sync:ledger:messages"


MULTI: Final = pack_command(("MULTI",))
EXEC: Final = pack_command(("EXEC",))
"""The two commands around every accept transaction, in Redis's wire format."""

BROKER_ERRORS: Final = (KombuOperationalError, redis.RedisError, OSError)
"""What a broker that is down or unreachable raises (socket errors are ``OSError``)."""


_process = [0]
"""How many forks this process is from the first one: per-process state (a Redis connection, a
kombu channel) made under another number belongs to a parent. Cheaper than ``os.getpid()``,
which is a system call, on every request."""


def _count_fork() -> None:
    _process[0] += 1


os.register_at_fork(after_in_child=_count_fork)


class BrokerUnavailableError(RuntimeError):
    """The event could not be handed to the broker; it must not be acknowledged."""


@dataclass(frozen=True)
class QueuedEvent:
    svix_id: str
    payload: str
    received_at_ms: int

    def task_args(self) -> list[Any]:
        return [self.svix_id, self.payload, self.received_at_ms]

    def argsrepr(self) -> str:
        """What Celery's logs and Flower show instead of the arguments: the payload holds names
        and email addresses."""
        return (
            f"({self.svix_id!r}, <payload of {len(self.payload)} characters>, "
            f"{self.received_at_ms})"
        )


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


def redis_client(settings: Settings) -> redis.Redis[bytes]:
    """A client of the broker's Redis with the publish timeouts (a pool of connections,
    thread-safe, reset by redis-py in a forked child)."""
    return redis.Redis.from_url(
        settings.broker_url,
        socket_connect_timeout=settings.broker_publish_timeout_seconds,
        socket_timeout=max(settings.broker_publish_timeout_seconds, 5.0),
    )


class ThreadConnections:
    """One Redis connection per request thread (and process) for the accept round trip: no
    pool check-out (each probes the socket), no lock shared between threads, and none of the
    client's retry and reply-callback layers around what is a single transaction."""

    def __init__(self, settings: Settings) -> None:
        self._pool = redis_client(settings).connection_pool
        self._local = threading.local()
        self._timeout = kernel_timeout(settings.broker_publish_timeout_seconds)

    def transact(self, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
        """Run ``commands`` in one ``MULTI``/``EXEC`` transaction, in one round trip, and
        return their replies; raise ``redis.ResponseError`` if Redis refused any of them.

        Redis refuses the whole transaction (``EXECABORT``) when a command cannot be queued,
        for instance when it is out of memory, so either every command ran or none did. After
        any failure the connection is closed (its replies may be half read) and opened again by
        the next transaction."""
        local = self._local
        # A forked child's main thread inherits the parent's thread-local values.
        if getattr(local, "process", None) != _process[0]:
            local.connection = self._pool.make_connection()
            local.connection.register_connect_callback(self._block_with_kernel_timeouts)
            local.process = _process[0]
        connection = local.connection
        try:
            connection.send_packed_command(
                [b"".join([MULTI, *map(pack_command, commands), EXEC])], check_health=False
            )
            for _queued in range(len(commands) + 1):
                connection.read_response()
            replies: list[Any] = connection.read_response()
        except BaseException:
            connection.disconnect()
            raise
        for reply in replies:
            if isinstance(reply, redis.ResponseError):
                raise reply
        return replies

    def _block_with_kernel_timeouts(self, connection: Any) -> None:
        """Make a new connection's socket blocking, bounded by kernel timeouts.

        redis-py bounds its reads and writes with a Python-level socket timeout, which puts a
        ``poll`` before every ``send`` and ``recv``: two more system calls a request, each of
        which lets go of the GIL and must win it back from the other request threads. A
        blocking socket with ``SO_SNDTIMEO`` and ``SO_RCVTIMEO`` is bounded as well: a call that
        times out fails with ``EAGAIN``, which redis-py raises as a ``ConnectionError``. The bound
        is the publish timeout, as for connecting: how long a webhook may wait for the broker."""
        sock = connection._sock
        sock.settimeout(None)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, self._timeout)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, self._timeout)


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
        transact: Callable[[Sequence[tuple[Any, ...]]], list[Any]],
    ) -> None:
        """Write the ledger entry and push the task ``message`` (queue list, raw message) in
        one transaction (``ThreadConnections.transact``): both or neither, and no worker can
        take the message before its entry is in the ledger."""
        queue_key, raw_message = message
        transact(
            [
                ("HSET", LEDGER_MESSAGES_KEY, event.svix_id, _ledger_entry(event)),
                ("ZADD", LEDGER_DUE_KEY, due_at, event.svix_id),
                ("LPUSH", queue_key, raw_message),
            ]
        )

    def remember(self, event: QueuedEvent, due_at: float) -> None:
        pipeline = self._client.pipeline(transaction=True)
        pipeline.hset(LEDGER_MESSAGES_KEY, event.svix_id, _ledger_entry(event))
        pipeline.zadd(LEDGER_DUE_KEY, {event.svix_id: due_at})
        pipeline.execute()

    def forget(self, svix_ids: Sequence[str]) -> None:
        if not svix_ids:
            return
        pipeline = self._client.pipeline(transaction=True)
        self.forget_in(pipeline, svix_ids)
        pipeline.execute()

    @staticmethod
    def forget_in(pipeline: Any, svix_ids: Sequence[str]) -> None:
        """Queue ``forget``'s commands on a pipeline of another client of the same Redis (the
        worker's acknowledgements), to run in its round trip."""
        if svix_ids:
            pipeline.zrem(LEDGER_DUE_KEY, *svix_ids)
            pipeline.hdel(LEDGER_MESSAGES_KEY, *svix_ids)

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


def _ledger_entry(event: QueuedEvent) -> bytes:
    return orjson.dumps([event.payload, event.received_at_ms])


class RedisTaskMessages:
    """Celery task messages exactly as ``send_task`` over kombu's Redis transport would put them
    on the queue list, built with Celery's and kombu's own code, without the publish machinery.

    ``app.amqp.as_task_v2`` makes the protocol 2 headers, properties and body; kombu serializes
    the body and a kombu Redis channel wraps it in the transport's envelope (``prepare_message``
    and what ``Channel.basic_publish`` adds for the default exchange: the base64 body, a delivery
    tag and the delivery info), and names the list (``_q_for_pri``) to ``LPUSH`` it onto. The
    channel is only used for that; it is opened once per process, on first use.

    A first delivery (no retries, no countdown: every webhook the ingress accepts) varies from
    the next only in its task id, delivery tag, arguments and their repr, so it is made from a
    template that Celery and kombu built once per process; a test holds the two equal.
    """

    def __init__(self, celery_app: Celery, queue_name: str) -> None:
        self._celery = celery_app
        self._queue = queue_name
        self._lock = threading.Lock()
        self._for_process = -1
        self._channel: Any = None
        self._origin = ""
        self._key = ""
        self._template = ""
        self._body_tail: list[Any] = []

    def _prepare(self) -> None:
        """Open the channel and build the template, once per process (also after a fork)."""
        if self._for_process == _process[0]:
            return
        with self._lock:
            if self._for_process == _process[0]:
                return
            connection = Connection(  # type: ignore[no-untyped-call]
                self._celery.conf.broker_url,
                transport_options=dict(self._celery.conf.broker_transport_options),
            )
            # The transport's own channel constructor: one ping, no retry loop (a broker that
            # is down must be a fast 503, not kombu's reconnect backoff).
            transport = connection.transport
            self._channel = transport.create_channel(transport)
            self._origin = anon_nodename()
            self._key, built = self._celery_message(QueuedEvent("", "", 0), None, 0, None)
            message = json.loads(built)
            _args, *self._body_tail = json.loads(base64.b64decode(message["body"]))
            message["body"] = _slot("body")
            message["headers"].update(id=_slot("id"), root_id=_slot("id"), argsrepr=_slot("repr"))
            message["properties"].update(correlation_id=_slot("id"), delivery_tag=_slot("tag"))
            self._template = _format_template(orjson.dumps(message).decode())
            self._for_process = _process[0]

    def build(self, event: QueuedEvent, task_id: str | None = None) -> tuple[str, str]:
        """The Redis list and the raw message of a delivery of ``event`` that is not a retry."""
        self._prepare()
        body = orjson.dumps([event.task_args(), *self._body_tail])
        # A fresh UUID is unique as a delivery tag and, for a new task, as its id: one serves
        # both.
        fresh = random_uuid4()
        return self._key, self._template.format(
            body=base64.b64encode(body).decode(),
            id=_json_string_content(task_id or fresh),
            repr=_json_string_content(event.argsrepr()),
            tag=fresh,
        )

    def build_with_celery(
        self,
        event: QueuedEvent,
        *,
        task_id: str | None = None,
        retries: int = 0,
        countdown: float | None = None,
    ) -> tuple[str, str]:
        """The Redis list and the raw message, every field made by Celery and kombu (for retries
        and re-sends, which carry a task id, a retry count or an eta)."""
        self._prepare()
        return self._celery_message(event, task_id, retries, countdown)

    def _celery_message(
        self, event: QueuedEvent, task_id: str | None, retries: int, countdown: float | None
    ) -> tuple[str, str]:
        channel = self._channel
        task_id = task_id or uuid()
        headers, properties, body, _sent_event = self._celery.amqp.as_task_v2(
            task_id,
            APPLY_EVENT_TASK,
            args=event.task_args(),
            kwargs={},
            retries=retries,
            countdown=countdown,
            argsrepr=event.argsrepr(),
            kwargsrepr="{}",
            origin=self._origin,
            ignore_result=True,
        )
        content_type, content_encoding, data = kombu_serialization.dumps(  # type: ignore[no-untyped-call]
            body, serializer="json"
        )
        message = channel.prepare_message(
            data,
            None,
            content_type,
            content_encoding,
            headers,
            {**properties, "delivery_mode": 2},
        )
        # What kombu's virtual Channel.basic_publish does before Channel._put.
        message["body"], body_encoding = channel.encode_body(message["body"], channel.body_encoding)
        message["properties"].update(body_encoding=body_encoding, delivery_tag=uuid())
        message["properties"]["delivery_info"].update(exchange="", routing_key=self._queue)
        key = channel._q_for_pri(self._queue, channel._get_message_priority(message))
        return str(key), str(kombu_json_dumps(message))  # type: ignore[no-untyped-call]


UUID4_FIXED_BITS_MASK: Final = (0xF000 << 64) | (0xC000 << 48)
"""The version nibble and the variant's two bits of a UUID's 128-bit integer."""
UUID4_FIXED_BITS: Final = (0x4000 << 64) | (0x8000 << 48)
"""Version 4, variant RFC 4122."""


def random_uuid4() -> str:
    """A random (version 4) UUID like ``str(uuid.uuid4())``, from the process's seeded
    pseudo-random generator instead of ``os.urandom``.

    A task id and delivery tag need to be unique, not unpredictable. ``os.urandom`` is a system
    call that lets go of the GIL, and winning it back from the other request threads costs a
    request more than the call itself. The ``random`` module reseeds itself from
    ``os.urandom`` in every forked child, so gunicorn's workers never share a sequence."""
    bits = (getrandbits(128) & ~UUID4_FIXED_BITS_MASK) | UUID4_FIXED_BITS
    text = f"{bits:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def _slot(name: str) -> str:
    """A marker in the template's text where each message has its own value."""
    return f"@@clerk-sync:{name}@@"


def _format_template(message_text: str) -> str:
    """The message's JSON text as a ``str.format`` template with a field for each slot: the
    text Celery and kombu built is kept, and a message costs one ``format`` call."""
    template = message_text.replace("{", "{{").replace("}", "}}")
    for name in ("body", "id", "repr", "tag"):
        template = template.replace(_slot(name), "{" + name + "}")
    return template


def _json_string_content(text: str) -> str:
    """``text`` escaped for use between the quotes of a JSON string."""
    return orjson.dumps(text).decode()[1:-1]


class Publisher:
    """Hands verified events to the broker as Celery task messages, together with their ledger
    entry, so that an acknowledged event is never only in a worker's memory.

    On a Redis broker one transaction, one round trip, writes the ledger entry and pushes the
    message (both or neither); other brokers (the filesystem broker of ``dev``) go through
    Celery's ``send_task``.
    """

    def __init__(self, settings: Settings, celery_app: Celery | None = None) -> None:
        self._settings = settings
        if celery_app is None:
            celery_app = Celery("clerk_sync_ingress", set_as_current=False)
            celery_app.conf.update(broker_configuration(settings))
        self._celery = celery_app
        self.ledger = Ledger.for_settings(settings)
        self._messages = (
            RedisTaskMessages(celery_app, settings.queue_name) if self.ledger is not None else None
        )
        self._connections = ThreadConnections(settings) if self.ledger is not None else None

    def publish(self, event: QueuedEvent) -> None:
        """Return once the broker holds the message and the ledger the event, else raise
        ``BrokerUnavailableError``."""
        due_at = time.time() + self._settings.ledger_redeliver_after_seconds
        try:
            if self.ledger is None or self._messages is None or self._connections is None:
                self._send_task(event)
                return
            self.ledger.accept(
                event, due_at, self._messages.build(event), self._connections.transact
            )
        except BROKER_ERRORS as error:
            raise BrokerUnavailableError(type(error).__name__) from error

    def send(
        self,
        event: QueuedEvent,
        *,
        task_id: str | None = None,
        retries: int = 0,
        countdown: float | None = None,
    ) -> None:
        """Publish the task message alone: the sweeper re-sends events already in the ledger,
        and a worker retrying an event sends it again (same ``task_id``, ``retries`` counted,
        due after ``countdown`` seconds). Broker errors propagate as they are."""
        if self.ledger is None or self._messages is None:
            self._send_task(event, task_id=task_id, retries=retries, countdown=countdown)
            return
        if retries or countdown is not None:
            key, message = self._messages.build_with_celery(
                event, task_id=task_id, retries=retries, countdown=countdown
            )
        else:
            key, message = self._messages.build(event, task_id)
        self.ledger.client.lpush(key, message)

    def _send_task(
        self,
        event: QueuedEvent,
        *,
        task_id: str | None = None,
        retries: int = 0,
        countdown: float | None = None,
    ) -> None:
        self._celery.send_task(
            APPLY_EVENT_TASK,
            args=event.task_args(),
            queue=self._settings.queue_name,
            task_id=task_id,
            retries=retries,
            countdown=countdown,
            argsrepr=event.argsrepr(),
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
