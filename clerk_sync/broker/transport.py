"""kombu's Redis transport, receiving a backlog many messages per round trip.

kombu receives one message per ``BRPOP`` and then records it as unacknowledged (the ``unacked``
hash and index, which is how a dead worker's messages come back) in a second round trip, each
through a ``redis.Redis`` client built for the occasion. The worker's main process, which
receives every message of the queue, spent most of its time waiting on those two round trips:
about 750 messages a second, with every process of the worker mostly idle.

This transport keeps kombu's ``BRPOP`` (it wakes the worker when a message arrives), and after
each message it takes up to ``MAX_FETCH`` more (as many as the prefetch limit allows) with one
Lua script that pops them *and* records them as unacknowledged, exactly as kombu would, in the
same atomic step. Those messages then go through kombu's and Celery's usual delivery, only
without kombu's per-message write. The same script call records the ``BRPOP``'s message too
(kombu's write of it is deferred to it), so a lone message, as every message is at light
traffic, costs one synchronous round trip instead of two. Messages, keys, acknowledgement and
restore are kombu's. The script also closes, for the messages it pops, the window in which
kombu has taken a message off the queue but not yet recorded it. Synchronous commands share one
client per channel.

It needs Redis 6.2 (``RPOP`` with a count); on an older Redis it receives as kombu does.
Celery uses it through ``broker_transport`` (``TRANSPORT``) with the ordinary ``redis://`` URL.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Final

import redis
from kombu import serialization
from kombu.exceptions import DecodeError
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.transport.virtual import QoS as VirtualQoS
from kombu.utils import json as kombu_json
from kombu.utils.json import dumps

from clerk_sync.core.json_reading import read_json

TRANSPORT: Final = "clerk_sync.broker.transport:Transport"
MAX_FETCH: Final = 100
"""Most messages taken per round trip (and delivered before the event loop runs again)."""

FETCH_SCRIPT: Final = """
for position = 3, #ARGV, 2 do
  redis.call('ZADD', KEYS[3], ARGV[2], ARGV[position])
  redis.call('HSET', KEYS[2], ARGV[position], ARGV[position + 1])
end
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
"""Record the messages kombu's ``BRPOP`` delivered (ARGV[3:]: delivery tag, record, ...), then
pop up to ARGV[1] more messages from the queue list KEYS[1] and record each: in the unacked hash
KEYS[2] and index KEYS[3] (score ARGV[2], now) as kombu's ``QoS.append`` does,
``[message, exchange, routing_key]`` by delivery tag. Whatever is not a kombu message goes back
to the head of the list, for kombu's own ``BRPOP`` to deal with."""

log = logging.getLogger("clerk_sync.worker")


class QoS(kombu_redis.QoS):
    """kombu's QoS, except for messages the fetch script records: those it has recorded already
    (``recorded``), and, while ``deferring``, the message of a ``BRPOP``, whose record goes in
    the fetch script's round trip instead of one of its own (``take_deferred``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]
        self.recorded: set[str] = set()
        self.deferring = False
        self._deferred: list[tuple[str, str]] = []

    def append(self, message: Any, delivery_tag: str) -> None:
        if delivery_tag in self.recorded:
            self.recorded.discard(delivery_tag)
            VirtualQoS.append(self, message, delivery_tag)  # type: ignore[no-untyped-call]
            return
        if self.deferring:
            VirtualQoS.append(self, message, delivery_tag)  # type: ignore[no-untyped-call]
            delivery = message.delivery_info
            record = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])  # type: ignore[no-untyped-call]
            self._deferred.append((delivery_tag, record))
            return
        super().append(message, delivery_tag)  # type: ignore[no-untyped-call]

    def take_deferred(self) -> list[tuple[str, str]]:
        """The deferred records of the messages still unacknowledged (one acknowledged or
        rejected meanwhile, as an unreadable one is at once, must not be recorded after)."""
        deferred, self._deferred = self._deferred, []
        return [
            (tag, record)
            for tag, record in deferred
            if tag in self._delivered and tag not in self._dirty
        ]


JSON_CONTENT_TYPE: Final = "application/json"


class Message(virtual.Message):
    """kombu's message, decoding an accepted JSON body with ``read_json`` directly: kombu's
    serializer registry, which would call the same function, wraps every call in a context
    manager made for the occasion (a tenth of the main process's time under a backlog)."""

    def _decode(self) -> Any:
        body, accept = self.body, self.accept
        if (
            self.content_type == JSON_CONTENT_TYPE
            and accept is not None
            and JSON_CONTENT_TYPE in accept
            and body
            and (self.content_encoding or "utf-8").lower() == "utf-8"
        ):
            try:
                return read_json(body)
            except Exception as error:  # kombu's registry wraps any error so
                raise DecodeError(error) from error
        return super()._decode()  # type: ignore[no-untyped-call]


class Channel(kombu_redis.Channel):
    QoS = QoS
    Message = Message
    _synchronous_client: redis.Redis[bytes] | None = None
    _fetch_script: Any = None
    _fetches = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.consumer_queues: dict[str, tuple[str, bool]] = {}
        """Queue, and whether it acknowledges its messages, by consumer tag. Only queues all of
        whose consumers acknowledge are fetched from: Celery's control replies (mingle's,
        inspect's, Flower's) are consumed without acknowledgement, and a record of one in the
        unacked hash would never be removed; it would come back after the visibility timeout
        into a reply queue no one reads."""
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

    def _create_client(self, asynchronous: bool = False) -> Any:
        """One client per channel and pool for synchronous commands (kombu builds one per
        command, which copies redis-py's table of about 200 reply callbacks each time)."""
        if asynchronous:
            return super()._create_client(asynchronous=True)  # type: ignore[no-untyped-call]
        client = self._synchronous_client
        # kombu drops its pool after a fork or a disconnect; a client of the old pool must go too.
        if client is None or client.connection_pool is not self.pool:
            client = super()._create_client()  # type: ignore[no-untyped-call]
            self._synchronous_client = client
            self._fetch_script = client.register_script(FETCH_SCRIPT)
        return client

    def _brpop_read(self, **options: Any) -> bool:
        fetching = self._fetches and not self.global_keyprefix
        self.qos.deferring = fetching
        try:
            delivered = bool(super()._brpop_read(**options))  # type: ignore[no-untyped-call]
        except BaseException:
            self.qos.deferring = False
            self._record(self.qos.take_deferred())
            raise
        self.qos.deferring = False
        deferred = self.qos.take_deferred()
        if delivered and fetching:
            self._fetch_more(deferred)
        else:
            self._record(deferred)
        return delivered

    def _record(self, deferred: list[tuple[str, str]]) -> None:
        """Record messages as unacknowledged as kombu's ``QoS.append`` does."""
        if not deferred:
            return
        now = time.time()
        pipeline = self._create_client().pipeline()
        for tag, record in deferred:
            pipeline.zadd(self.unacked_index_key, {tag: now})
            pipeline.hset(self.unacked_key, tag, record)
        pipeline.execute()

    def _fetch_more(self, deferred: list[tuple[str, str]]) -> None:
        """Record the ``BRPOP``'s message and take more, in one round trip per queue."""
        room = self.qos.can_consume_max_estimate()
        count = MAX_FETCH if room is None else max(0, min(room, MAX_FETCH))
        records = [part for tag_and_record in deferred for part in tag_and_record]
        for queue in self._acknowledged_queues():
            client = self._create_client()
            try:
                items = self._fetch_script(
                    keys=[self._q_for_pri(queue, 0), self.unacked_key, self.unacked_index_key],  # type: ignore[no-untyped-call]
                    args=[count, time.time(), *records],
                    client=client,
                )
            except redis.ResponseError as error:
                self._fetches = False
                log.warning(
                    "receiving one message per round trip, as kombu does: %s (RPOP with a "
                    "count needs Redis 6.2)",
                    error,
                )
                self._record(deferred)
                return
            records = []
            messages = [read_json(item) for item in items]
            self._deliver_fetched(queue, messages)
            count -= len(items)
            if count <= 0:
                break
        if records:
            self._record(deferred)

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


class Transport(kombu_redis.Transport):
    Channel = Channel


def read_broker_json_fast() -> None:
    """Decode ``application/json`` messages with ``read_json`` in this process (kombu's
    registry; encoding stays kombu's)."""
    serialization.register(  # type: ignore[no-untyped-call]
        "json",
        kombu_json.dumps,
        read_json,
        content_type="application/json",
        content_encoding="utf-8",
    )
