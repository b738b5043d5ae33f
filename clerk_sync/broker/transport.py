"""kombu's Redis transport, receiving a backlog many messages per round trip.

kombu receives one message per ``BRPOP`` and then records it as unacknowledged (the ``unacked``
hash and index, which is how a dead worker's messages come back) in a second round trip. The
worker's main process, which receives every message of the queue, spends most of its time
waiting on those round trips (what this buys is measured by ``bash bench/run --only hacks``;
see this package's README).

This transport keeps kombu's ``BRPOP`` (it wakes the worker when a message arrives, and kombu
records that message as it always does), and after each message it takes up to ``MAX_FETCH``
more (as many as the prefetch limit allows) with one Lua script that pops them *and* records
them as unacknowledged, exactly as kombu would, in the same atomic step. Those messages then go
through kombu's and Celery's usual delivery, only without kombu's per-message write. Messages,
keys, acknowledgement and restore are kombu's. The script also closes, for the messages it pops,
the window in which kombu has taken a message off the queue but not yet recorded it.

Only queues whose consumers acknowledge their messages are fetched from: Celery's control
replies (mingle's, ``inspect``'s, Flower's) are consumed without acknowledgement, and a record
of one would never be removed.

It needs Redis 6.2 (``RPOP`` with a count); on an older Redis it receives as kombu does.
Celery uses it through ``broker_transport`` (``TRANSPORT``) with the ordinary ``redis://`` URL,
and ``SENTINEL_TRANSPORT`` (kombu's sentinel transport with this channel) with ``sentinel://``
URLs: ``transport_for`` picks.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import QoS as VirtualQoS
from kombu.utils.json import loads

from clerk_sync.core.sentinel import is_sentinel_url

TRANSPORT: Final = "clerk_sync.broker.transport:Transport"
SENTINEL_TRANSPORT: Final = "clerk_sync.broker.transport:SentinelTransport"
MAX_FETCH: Final = 100
"""Most messages taken per round trip (and delivered before the event loop runs again)."""

FETCH_SCRIPT: Final = """
local fetched = {}
if tonumber(ARGV[1]) <= 0 then
  return fetched
end
local items = redis.call('RPOP', KEYS[1], ARGV[1])
if not items then
  return fetched
end
for _, item in ipairs(items) do
  local ok, message = pcall(cjson.decode, item)
  local properties = ok and type(message) == 'table' and message.properties
  local tag = type(properties) == 'table' and properties.delivery_tag
  if type(tag) == 'string' then
    local info = type(properties.delivery_info) == 'table' and properties.delivery_info or {}
    local exchange = type(info.exchange) == 'string' and info.exchange or ''
    local routing_key = type(info.routing_key) == 'string' and info.routing_key or ''
    redis.call('ZADD', KEYS[3], ARGV[2], tag)
    redis.call('HSET', KEYS[2], tag,
      '[' .. item .. ',' .. cjson.encode(exchange) .. ',' .. cjson.encode(routing_key) .. ']')
    table.insert(fetched, item)
  else
    redis.call('RPUSH', KEYS[1], item)
  end
end
return fetched
"""
"""Pop up to ARGV[1] messages from the queue list KEYS[1] and record each: in the unacked hash
KEYS[2] and index KEYS[3] (score ARGV[2], now) as kombu's ``QoS.append`` does,
``[message, exchange, routing_key]`` by delivery tag. Whatever is not a kombu message goes back
to the head of the list, for kombu's own ``BRPOP`` to deal with."""

log = logging.getLogger("clerk_sync.worker")


class QoS(kombu_redis.QoS):
    """kombu's QoS, except for the messages the fetch script recorded already (``recorded``):
    kombu's own write of their record is skipped."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self.recorded: set[str] = set()

    def append(self, message: Any, delivery_tag: str) -> None:
        if delivery_tag in self.recorded:
            self.recorded.discard(delivery_tag)
            VirtualQoS.append(self, message, delivery_tag)  # type: ignore[no-untyped-call]
            return
        super().append(message, delivery_tag)  # type: ignore[no-untyped-call]


class Channel(kombu_redis.Channel):
    QoS = QoS
    _fetch_script: Any = None
    _fetches = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.consumer_queues: dict[str, tuple[str, bool]] = {}
        """Queue, and whether it acknowledges its messages, by consumer tag."""
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]

    def basic_consume(
        self, queue: str, no_ack: bool, callback: Any, consumer_tag: str, **kwargs: Any
    ) -> Any:
        result = super().basic_consume(queue, no_ack, callback, consumer_tag, **kwargs)  # type: ignore[no-untyped-call]
        self.consumer_queues[consumer_tag] = (queue, not no_ack)
        return result

    def basic_cancel(self, consumer_tag: str) -> Any:
        self.consumer_queues.pop(consumer_tag, None)
        return super().basic_cancel(consumer_tag)  # type: ignore[no-untyped-call]

    def _acknowledged_queues(self) -> list[str]:
        """The active queues, in kombu's fair-cycle order, that only acknowledging consumers
        consume."""
        without_ack = {queue for queue, acks in self.consumer_queues.values() if not acks}
        with_ack = {queue for queue, acks in self.consumer_queues.values() if acks}
        return [q for q in self.active_queues if q in with_ack and q not in without_ack]

    def _brpop_read(self, **options: Any) -> bool:
        delivered = bool(super()._brpop_read(**options))  # type: ignore[no-untyped-call]
        if delivered and self._fetches and not self.global_keyprefix:
            self._fetch_more()
        return delivered

    def _fetch_more(self) -> None:
        """Take more messages, recorded as unacknowledged, in one round trip per queue."""
        room = self.qos.can_consume_max_estimate()
        count = MAX_FETCH if room is None else max(0, min(room, MAX_FETCH))
        if count <= 0:
            return
        for queue in self._acknowledged_queues():
            with self.conn_or_acquire() as client:
                if self._fetch_script is None:
                    self._fetch_script = client.register_script(FETCH_SCRIPT)
                try:
                    # kombu's list for a queue's messages of the default priority is the queue's
                    # name (the ingress publishes no priorities).
                    items = self._fetch_script(
                        keys=[queue, self.unacked_key, self.unacked_index_key],
                        args=[count, time.time()],
                        client=client,
                    )
                except redis.ResponseError as error:
                    self._fetches = False
                    log.warning(
                        "receiving one message per round trip, as kombu does: %s (RPOP with a "
                        "count needs Redis 6.2)",
                        error,
                    )
                    return
            self._deliver_fetched(queue, [loads(item) for item in items])  # type: ignore[no-untyped-call]
            count -= len(items)
            if count <= 0:
                break

    def _deliver_fetched(self, queue: str, messages: list[dict[str, Any]]) -> None:
        """Hand each message to kombu's delivery; if one raises, the rest, already recorded as
        unacknowledged, go back on the queue at once instead of after the visibility timeout."""
        tags = [message["properties"]["delivery_tag"] for message in messages]
        self.qos.recorded.update(tags)
        for position, message in enumerate(messages):
            try:
                self.connection._deliver(message, queue)
            except BaseException:
                for tag in tags[position + 1 :]:
                    self.qos.recorded.discard(tag)
                    self.qos.restore_by_tag(tag, leftmost=True)
                raise


class KeepsItsClient:
    """A kombu transport that keeps its ``client`` (the kombu ``Connection``, whose URL names
    the Redis, or the sentinels) once the connection is closed.

    After losing the broker, Celery's consumer collects the connection (kombu sets the
    transport's ``client`` to None) and then closes it; closing a channel restores its
    unacknowledged messages through a new pool, which kombu builds from ``client``'s URL.
    Without it the worker stopped ("Unrecoverable error: AttributeError: 'NoneType' object has
    no attribute 'hostname'") whenever the broker went away while it held messages; with it the
    restore fails as a connection error, which Celery rides out, or (after a Sentinel failover)
    reaches the new master."""

    _kept_client: Any = None

    @property
    def client(self) -> Any:
        return self._kept_client

    @client.setter
    def client(self, value: Any) -> None:
        if value is not None:
            self._kept_client = value


class Transport(KeepsItsClient, kombu_redis.Transport):
    Channel = Channel


class SentinelChannel(Channel, kombu_redis.SentinelChannel):
    """This module's channel on kombu's sentinel channel: the master's connections come from
    the sentinels (kombu's ``_get_pool``), the fetching and recording are this module's."""


class SentinelTransport(KeepsItsClient, kombu_redis.SentinelTransport):
    """kombu's sentinel transport with ``SentinelChannel`` (and ``KeepsItsClient``)."""

    Channel = SentinelChannel


def transport_for(broker_url: str) -> str:
    """The transport (Celery's ``broker_transport``) for a Redis broker URL."""
    return SENTINEL_TRANSPORT if is_sentinel_url(broker_url) else TRANSPORT
