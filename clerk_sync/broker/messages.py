"""Celery task messages for the Redis queue list, and the ingress's one-round-trip accept.

``RedisTaskMessages`` builds the message ``send_task`` over kombu's Redis transport would put on
the queue, from a template Celery and kombu built once per process; ``ThreadConnections`` runs
the accept transaction on one blocking Redis connection per request thread.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from random import getrandbits
from typing import Any, Final

import orjson
import redis
from celery import Celery
from celery.utils.nodenames import anon_nodename
from hiredis import pack_command
from kombu import serialization as kombu_serialization
from kombu.connection import Connection
from kombu.utils.json import dumps as kombu_json_dumps
from kombu.utils.uuid import uuid

from clerk_sync.core.queue import APPLY_EVENT_TASK, QueuedEvent, redis_client
from clerk_sync.core.sentinel import ReplicaWaitError
from clerk_sync.core.settings import Settings

_process = [0]
"""How many forks this process is from the first one: per-process state (a Redis connection, a
kombu channel) made under another number belongs to a parent. Cheaper than ``os.getpid()``,
which is a system call, on every request."""


def _count_fork() -> None:
    _process[0] += 1


os.register_at_fork(after_in_child=_count_fork)


class ThreadConnections:
    """One Redis connection per request thread (and process) for the accept round trip: no
    pool check-out (each probes the socket), no lock shared between threads, and none of the
    client's retry and reply-callback layers around what is a single transaction.

    With ``CLERK_SYNC_ACCEPT_REPLICA_WAIT_MS`` each command is followed, in the same round trip,
    by ``WAIT 1 <ms>``; ``ReplicaWaitError`` if no replica confirmed it in time."""

    def __init__(self, settings: Settings) -> None:
        # Reads and writes bounded by the publish timeout, as connecting is: how long a webhook
        # may wait for the broker before it is answered 503 (plus the replica wait, if any).
        wait_ms = settings.accept_replica_wait_ms
        timeout = settings.broker_publish_timeout_seconds
        self._pool = redis_client(settings, socket_timeout=timeout + wait_ms / 1000).connection_pool
        wait: tuple[Any, ...] = ("WAIT", "1", str(wait_ms))
        self._wait = pack_command(wait) if wait_ms else None
        self._local = threading.local()

    @property
    def waits_for_a_replica(self) -> bool:
        return self._wait is not None

    def run(self, command: tuple[Any, ...]) -> Any:
        """Run one command (the accept script: a Lua script runs atomically, no ``MULTI``
        needed) in one round trip and return its reply; raise ``redis.ResponseError`` if Redis
        refused it. After any failure the connection is closed and opened again by the next."""
        connection = self._connection()
        packed = (
            [pack_command(command)] if self._wait is None else [pack_command(command), self._wait]
        )
        try:
            connection.send_packed_command(packed, check_health=False)
            reply = connection.read_response()
            replicas = connection.read_response() if self._wait is not None else 1
        except BaseException:
            connection.disconnect()
            self._local.connected = False
            raise
        if isinstance(reply, redis.ResponseError):
            raise reply
        if not isinstance(replicas, int) or replicas < 1:
            raise ReplicaWaitError("no replica confirmed the event in time")
        return reply

    def _connection(self) -> Any:
        local = self._local
        # A forked child's main thread inherits the parent's thread-local values.
        if getattr(local, "process", None) != _process[0]:
            local.connection = self._pool.make_connection()
            local.process = _process[0]
            local.connected = False
        if not local.connected:
            # Connected here, not by the send: ``send_packed_command`` connects to the
            # configured address, skipping a Sentinel-managed connection's ``connect``, which
            # asks the sentinels for the master's (redis-py 8.2).
            local.connection.connect()
            local.connected = True
        return local.connection


class RedisTaskMessages:
    """Celery task messages exactly as ``send_task`` over kombu's Redis transport would put them
    on the queue list, built with Celery's and kombu's own code, without the publish machinery.

    ``app.amqp.as_task_v2`` makes the protocol 2 headers, properties and body; kombu serializes
    the body and a kombu Redis channel wraps it in the transport's envelope (``prepare_message``
    and what ``Channel.basic_publish`` adds for the default exchange: the base64 body, a delivery
    tag and the delivery info); it goes onto the list named after the queue, kombu's list for
    messages of the default priority. The channel is only used for that; it is opened once per
    process, on first use.

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
        return self._queue, str(kombu_json_dumps(message))  # type: ignore[no-untyped-call]


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
