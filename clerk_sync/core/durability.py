"""Whether the broker's Redis keeps what the ingress acknowledges.

A ``202`` tells Svix to stop retrying, so from then on Redis holds the only copy of the event
until a worker commits it. That copy survives only if Redis writes an append-only file
(``appendonly yes``; RDB snapshots alone lose everything accepted since the last one) and never
evicts keys (``maxmemory-policy noeviction``; any other policy may drop queue or ledger keys once
``maxmemory`` is reached). This module reads both settings with ``CONFIG GET``, or, where a
managed Redis disables or renames it, from ``INFO persistence`` / ``INFO memory``, and says
"unknown" when neither answers: an unknown broker is never reported as durable.

On RabbitMQ the broker is durable when the task queue is a durable quorum queue
(``check_rabbitmq``): publisher confirms make a ``202`` wait for the broker's disk.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import amqp.exceptions
import redis
from kombu.connection import Connection

from clerk_sync.core.queue import BROKER_ERRORS, redis_client
from clerk_sync.core.rabbitmq import task_queue
from clerk_sync.core.settings import Settings

SAFE_EVICTION_POLICY: Final = "noeviction"


class Verdict(StrEnum):
    DURABLE = "durable"
    NOT_DURABLE = "not_durable"
    UNKNOWN = "unknown"
    """Redis answered neither ``CONFIG GET`` nor ``INFO`` (or is unreachable)."""
    NOT_CHECKED = "not_checked"
    """The broker is not Redis (the filesystem broker of ``clerk-sync dev``)."""


@dataclass(frozen=True)
class BrokerDurability:
    """The verdict, why, and what it was based on (values are None where unread)."""

    verdict: Verdict
    reasons: tuple[str, ...] = ()
    appendonly: str | None = None
    maxmemory_policy: str | None = None
    read_with: str | None = None
    """``CONFIG GET``, ``INFO``, or both (one setting from each), None if nothing was read."""

    @property
    def durable(self) -> bool | None:
        """True or False when known; None when unknown or not checked."""
        if self.verdict is Verdict.DURABLE:
            return True
        return False if self.verdict is Verdict.NOT_DURABLE else None

    def as_dict(self) -> dict[str, Any]:
        """The ``durability`` object of ``/readyz`` and ``clerk-sync status --json``."""
        return {
            "verdict": str(self.verdict),
            "reasons": list(self.reasons),
            "appendonly": self.appendonly,
            "maxmemory_policy": self.maxmemory_policy,
            "read_with": self.read_with,
        }


def check_broker(settings: Settings) -> BrokerDurability:
    """Check the broker named by ``settings`` (a client of its own, closed afterwards)."""
    if settings.uses_amqp_broker:
        return check_rabbitmq(settings)
    if not settings.uses_redis_broker:
        scheme = settings.broker_url.split("://", 1)[0]
        return BrokerDurability(
            Verdict.NOT_CHECKED,
            (f"the broker is not Redis ({scheme}://): its persistence is not checked",),
        )
    client = redis_client(settings)
    try:
        return check_redis(client)
    finally:
        client.close()


def check_rabbitmq(settings: Settings) -> BrokerDurability:
    """RabbitMQ: durable when the task queue is a durable quorum queue. Declaring it with its
    arguments (as the ingress and workers do) succeeds only then, RabbitMQ refusing a queue of
    that name declared otherwise (``PRECONDITION_FAILED``); every publish is confirmed
    (``clerk_sync.core.rabbitmq``), so a confirmed message is on disk on a majority of the
    queue's members. The number of members (a one-node cluster survives a restart, not the loss
    of its disk) is the deployment's: see operations.md."""
    name = settings.queue_name
    try:
        with Connection(  # type: ignore[no-untyped-call]
            settings.broker_url, connect_timeout=settings.broker_publish_timeout_seconds
        ) as connection:
            connection.connect()
            task_queue(settings)(connection.default_channel).declare()  # type: ignore[no-untyped-call]
    except amqp.exceptions.PreconditionFailed as error:
        return BrokerDurability(
            Verdict.NOT_DURABLE,
            (f"queue {name} exists, but not as a durable quorum queue: {error}",),
            read_with="queue.declare",
        )
    except BROKER_ERRORS as error:
        return BrokerDurability(
            Verdict.UNKNOWN, (f"the broker could not be asked ({type(error).__name__})",)
        )
    return BrokerDurability(
        Verdict.DURABLE,
        (
            f"queue {name} is a durable quorum queue and every publish is confirmed: RabbitMQ "
            "confirms a message once a majority of the queue's members wrote it to disk",
        ),
        read_with="queue.declare",
    )


def check_redis(client: redis.Redis[bytes]) -> BrokerDurability:
    """Read ``appendonly`` and ``maxmemory-policy`` and judge them; never raises a Redis error
    (an unreachable Redis is "unknown", with the error's class as the reason)."""
    try:
        appendonly, policy, sources = _read_settings(client)
    except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
        return BrokerDurability(
            Verdict.UNKNOWN, (f"the broker could not be asked ({type(error).__name__})",)
        )
    unsafe: list[str] = []
    unread: list[str] = []
    if appendonly is None:
        unread.append("appendonly could be read neither with CONFIG GET nor from INFO persistence")
    elif appendonly != "yes":
        unsafe.append(
            "appendonly is off: a Redis restart loses accepted events (RDB snapshots alone lose "
            "everything since the last one)"
        )
    if policy is None:
        unread.append("maxmemory-policy could be read neither with CONFIG GET nor from INFO memory")
    elif policy != SAFE_EVICTION_POLICY:
        unsafe.append(
            f"maxmemory-policy is {policy}: Redis may evict queued events once maxmemory is "
            f"reached (only {SAFE_EVICTION_POLICY} is safe)"
        )
    verdict = Verdict.NOT_DURABLE if unsafe else Verdict.UNKNOWN if unread else Verdict.DURABLE
    read_with = " and ".join(sorted(sources)) or None
    return BrokerDurability(verdict, (*unsafe, *unread), appendonly, policy, read_with)


def _read_settings(client: redis.Redis[bytes]) -> tuple[str | None, str | None, set[str]]:
    """(appendonly, maxmemory-policy, where they were read); None for what could not be."""
    sources: set[str] = set()
    appendonly = _config_get(client, "appendonly")
    policy = _config_get(client, "maxmemory-policy")
    if appendonly is not None or policy is not None:
        sources.add("CONFIG GET")
    if appendonly is None:
        enabled = _info_field(client, "persistence", "aof_enabled")
        if enabled is not None:
            appendonly = "yes" if str(enabled) == "1" else "no"
            sources.add("INFO")
    if policy is None:
        info_policy = _info_field(client, "memory", "maxmemory_policy")
        if info_policy is not None:
            policy = str(info_policy)
            sources.add("INFO")
    return appendonly, policy, sources


def _config_get(client: redis.Redis[bytes], name: str) -> str | None:
    """One setting by ``CONFIG GET``; None if the command is refused, renamed or disabled
    (``ResponseError``: unknown command, NOPERM) or does not know the name."""
    try:
        reply = client.config_get(name)
    except redis.ResponseError:
        return None
    value = reply.get(name)
    return None if value is None else _text(value)


def _info_field(client: redis.Redis[bytes], section: str, field: str) -> object | None:
    try:
        info = client.info(section)
    except redis.ResponseError:
        return None
    return info.get(field)


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class DurabilityMonitor:
    """The broker's durability, checked at most every ``max_age_seconds`` however often it is
    asked (``/readyz`` and every metrics scrape ask); thread-safe."""

    def __init__(self, settings: Settings, max_age_seconds: float = 10.0) -> None:
        self._settings = settings
        self._max_age = max_age_seconds
        self._lock = threading.Lock()
        self._checked_at = 0.0
        self._last: BrokerDurability | None = None

    def current(self) -> BrokerDurability:
        with self._lock:
            now = time.monotonic()
            if self._last is None or now - self._checked_at >= self._max_age:
                self._last = check_broker(self._settings)
                self._checked_at = now
            return self._last
