"""The workers' kombu transport: a backlog is received many messages per round trip, each one
recorded as unacknowledged exactly as kombu records it, so kombu's restore brings it back."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from kombu import Consumer, Queue, serialization
from kombu.exceptions import ContentDisallowed, DecodeError

from clerk_sync.broker.publisher import Publisher
from clerk_sync.broker.transport import Channel
from clerk_sync.core.queue import QueuedEvent
from clerk_sync.core.settings import Settings
from tests.conftest import queue_length
from workers.app import create_celery_app


def publish(settings: Settings, count: int) -> list[str]:
    publisher = Publisher(settings)
    svix_ids = [f"msg_{number}" for number in range(count)]
    for svix_id in svix_ids:
        publisher.publish(QueuedEvent(svix_id, '{"type": "user.created"}', 1))
    return svix_ids


def receive(
    settings: Settings, prefetch: int, rounds: int, *, ack_at_once: bool = False
) -> tuple[list[Any], Channel, Any]:
    """Consume with a prefetch limit, one ``drain_events`` (one ``BRPOP``) per round;
    ``ack_at_once``: acknowledge each message as it is delivered."""
    connection = create_celery_app(settings).connection_for_read()
    channel = connection.default_channel
    assert isinstance(channel, Channel)
    channel.basic_qos(0, prefetch, False)
    received: list[Any] = []
    consumer = Consumer(
        channel,
        queues=[Queue(settings.queue_name)],
        callbacks=[
            lambda _body, message: received.append(message) or (ack_at_once and message.ack())
        ],
        accept=["json"],
    )
    consumer.consume()
    for _ in range(rounds):
        connection.drain_events(timeout=5)
    return received, channel, connection


def test_one_brpop_brings_as_many_messages_as_the_prefetch_limit_allows(
    settings: Settings, redis_client: redis.Redis[bytes]
) -> None:
    svix_ids = publish(settings, 50)
    received, channel, connection = receive(settings, prefetch=30, rounds=1)
    try:
        assert [message.decode()[0][0] for message in received] == svix_ids[:30], "in order"
        assert queue_length(redis_client, settings.queue_name) == 20
        unacked = redis_client.hgetall("unacked")
        assert set(unacked) == {message.delivery_tag.encode() for message in received}
        assert redis_client.zcard("unacked_index") == 30
        for message in received:
            raw, exchange, routing_key = json.loads(unacked[message.delivery_tag.encode()])
            assert raw == message._raw
            assert (exchange, routing_key) == ("", settings.queue_name)

        for message in received[:10]:
            message.ack()
        assert redis_client.hlen("unacked") == 20
        channel.qos.restore_unacked()
        assert redis_client.hlen("unacked") == 0
        assert queue_length(redis_client, settings.queue_name) == 40, "kombu's restore works"
    finally:
        connection.release()


def test_a_message_body_decodes_as_kombus_serializer_registry_decodes_it(
    settings: Settings, redis_client: redis.Redis[bytes]
) -> None:
    """Fetched messages are kombu's own: they read a body as kombu's serializer registry does,
    and refuse what kombu refuses with kombu's errors."""
    publish(settings, 3)
    received, _channel, connection = receive(settings, prefetch=10, rounds=1)
    try:
        assert len(received) == 3
        for message in received:
            expected = serialization.loads(
                message.body, message.content_type, message.content_encoding, accept=message.accept
            )
            assert message.decode() == expected
            assert expected[0][1] == '{"type": "user.created"}'

        unreadable, untrusted = received[0], received[1]
        unreadable.body, unreadable._decoded_cache = b'[["msg_0", "{', None
        with pytest.raises(DecodeError):
            unreadable.decode()
        untrusted.content_type, untrusted._decoded_cache = "application/x-python-serialize", None
        with pytest.raises(ContentDisallowed):
            untrusted.decode()
    finally:
        connection.release()


def test_what_is_not_a_kombu_message_is_left_on_the_queue_for_kombu(
    settings: Settings, redis_client: redis.Redis[bytes]
) -> None:
    publish(settings, 3)
    redis_client.lpush(settings.queue_name, b"not a message")
    received, _channel, connection = receive(settings, prefetch=10, rounds=1)
    try:
        assert len(received) == 3
        assert redis_client.lrange(settings.queue_name, 0, -1) == [b"not a message"]
        assert redis_client.hlen("unacked") == 3
    finally:
        connection.release()


def test_a_lone_message_is_recorded_as_kombu_records_it(
    settings: Settings, redis_client: redis.Redis[bytes]
) -> None:
    """A ``BRPOP``'s message is recorded by kombu itself; the fetch script's records (above) are
    the same, and kombu's restore brings either back."""
    publish(settings, 1)
    received, channel, connection = receive(settings, prefetch=10, rounds=1)
    try:
        [message] = received
        raw, exchange, routing_key = json.loads(redis_client.hget("unacked", message.delivery_tag))
        assert raw == message._raw
        assert (exchange, routing_key) == ("", settings.queue_name)
        assert redis_client.zscore("unacked_index", message.delivery_tag) is not None
        channel.qos.restore_unacked()
        assert queue_length(redis_client, settings.queue_name) == 1, "kombu's restore works"
    finally:
        connection.release()


def test_a_message_acknowledged_on_delivery_is_not_recorded_after(
    settings: Settings, redis_client: redis.Redis[bytes]
) -> None:
    """A message acknowledged while it is delivered is not left in ``unacked``, to be restored
    later."""
    publish(settings, 1)
    received, _channel, connection = receive(settings, prefetch=10, rounds=1, ack_at_once=True)
    try:
        assert len(received) == 1
        assert redis_client.hlen("unacked") == 0
        assert redis_client.zcard("unacked_index") == 0
    finally:
        connection.release()


def test_the_queue_list_of_default_priority_messages_is_named_after_the_queue(
    settings: Settings,
) -> None:
    """The fetch script pops, and the ingress pushes onto, the list named after the queue: kombu's
    list for messages of the default priority (an upgrade that renamed it would strand them)."""
    connection = create_celery_app(settings).connection_for_read()
    try:
        channel = connection.default_channel
        assert channel._q_for_pri(settings.queue_name, channel.priority(0)) == settings.queue_name
    finally:
        connection.release()
