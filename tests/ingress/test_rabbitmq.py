"""The ingress on RabbitMQ (issue #20): ``202`` only once the broker confirmed the message on a
durable quorum queue, ``503`` when it is unreachable or does not confirm in time; ``/readyz``
reports the queue's durability. Against the machine's RabbitMQ (``tests.rabbitmq``) and, to
block it, a node of the test's own."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import amqp.exceptions
import pytest
from kombu.connection import Connection
from kombu.entity import Queue

from clerk_sync.core.message_auth import MessageAuthenticator
from clerk_sync.core.queue import APPLY_EVENT_TASK
from clerk_sync.core.settings import Settings
from ingress import create_app
from tests.conftest import MESSAGE_SECRET, WEBHOOK_SECRET
from tests.factories import signed_headers
from tests.ingress.conftest import WEBHOOK_PATH, assert_error, org_body
from tests.rabbitmq import RabbitServer, amqp_settings, queue_depth, rabbit_server
from tests.servers import free_port

__all__ = ["amqp_settings", "rabbit_server"]


def post(settings: Settings, body: str) -> tuple[int, float, dict[str, str]]:
    """POST a signed body to a new ingress app: (status, seconds taken, headers)."""
    client = create_app(settings).test_client()
    headers = signed_headers(WEBHOOK_SECRET, body)
    started = time.monotonic()
    response = client.post(WEBHOOK_PATH, data=body, headers=headers)
    return response.status_code, time.monotonic() - started, dict(response.headers)


def test_an_accepted_webhook_is_a_signed_persistent_message_on_a_quorum_queue(
    amqp_settings: Settings,
) -> None:
    body = org_body()
    client = create_app(amqp_settings).test_client()
    response = client.post(
        WEBHOOK_PATH, data=body, headers=signed_headers(WEBHOOK_SECRET, body, svix_id="msg_rmq_1")
    )
    assert response.status_code == 202
    assert queue_depth(amqp_settings) == (1, 0)

    with Connection(amqp_settings.broker_url, connect_timeout=5) as connection:  # type: ignore[no-untyped-call]
        channel = connection.default_channel
        message = channel.basic_get(amqp_settings.queue_name, no_ack=True)
        # The queue is a quorum queue: declaring it as a classic one is refused.
        with pytest.raises(amqp.exceptions.PreconditionFailed):
            Queue(amqp_settings.queue_name, durable=True)(connection.channel()).declare()  # type: ignore[no-untyped-call]
    assert message.headers["task"] == APPLY_EVENT_TASK
    assert message.properties["delivery_mode"] == 2, "persistent"
    svix_id, payload, received_at_ms, mac = json.loads(message.body)[0]
    assert (svix_id, payload) == ("msg_rmq_1", body)
    assert MessageAuthenticator([MESSAGE_SECRET]).verify(svix_id, payload, received_at_ms, mac)
    assert "msg_rmq_1" in message.headers["argsrepr"]
    assert payload not in message.headers["argsrepr"], "no payload in what Flower shows"


def test_rabbitmq_unreachable_is_503_with_retry_after_at_once(settings: Settings) -> None:
    down = replace(settings, broker_url=f"amqp://guest:guest@127.0.0.1:{free_port()}//")
    for _ in range(2):
        status, took, headers = post(down, org_body())
        assert status == 503
        assert int(headers["Retry-After"]) > 0
        assert took < 3 * settings.broker_publish_timeout_seconds


def test_a_publish_rabbitmq_does_not_confirm_in_time_is_503_and_then_202(
    settings: Settings, rabbit_server: RabbitServer
) -> None:
    """RabbitMQ's memory alarm (a watermark of 0 on our own node) blocks every publishing
    connection: the message is written to the socket and never confirmed. The ingress answers
    ``503`` once the publish timeout has passed (twice: on its connection, then a new one), and
    ``202`` again once the alarm is cleared."""
    on_node = replace(settings, broker_url=rabbit_server.url)
    assert post(on_node, org_body())[0] == 202
    rabbit_server.ctl("set_vm_memory_high_watermark", "0")
    try:
        status, took, headers = post(on_node, org_body())
        assert status == 503
        assert int(headers["Retry-After"]) > 0
        assert settings.broker_publish_timeout_seconds <= took
        assert took < 4 * settings.broker_publish_timeout_seconds + 2
    finally:
        rabbit_server.ctl("set_vm_memory_high_watermark", "0.4")
    assert post(on_node, org_body())[0] == 202


def test_readyz_reports_a_durable_quorum_queue(amqp_settings: Settings) -> None:
    response = (
        create_app(replace(amqp_settings, require_durable_broker=True)).test_client().get("/readyz")
    )
    assert response.status_code == 200, response.get_json()
    durability = response.get_json()["durability"]
    assert durability["verdict"] == "durable"
    assert "quorum queue" in durability["reasons"][0]


def test_readyz_names_a_classic_queue_as_not_durable(amqp_settings: Settings) -> None:
    with Connection(amqp_settings.broker_url, connect_timeout=5) as connection:  # type: ignore[no-untyped-call]
        Queue(amqp_settings.queue_name, durable=True)(connection.default_channel).declare()  # type: ignore[no-untyped-call]
    ready = create_app(amqp_settings).test_client().get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["durability"]["verdict"] == "not_durable"
    required = replace(amqp_settings, require_durable_broker=True)
    assert_error(create_app(required).test_client().get("/readyz"), 503, "broker_not_durable")


def test_readyz_is_503_when_rabbitmq_is_unreachable(settings: Settings) -> None:
    down = replace(settings, broker_url=f"amqp://guest:guest@127.0.0.1:{free_port()}//")
    assert_error(create_app(down).test_client().get("/readyz"), 503, "broker_unavailable")
