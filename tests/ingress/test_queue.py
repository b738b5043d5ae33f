"""The message the ingress pushes itself (one MULTI/EXEC with the ledger) is the message Celery's
``send_task`` would have queued: same protocol 2 headers, body and kombu envelope."""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from datetime import datetime
from typing import Any

import pytest
import redis
from celery import Celery

from clerk_sync.broker.messages import RedisTaskMessages, random_uuid4
from clerk_sync.broker.publisher import Publisher
from clerk_sync.core.ledger_scripts import LEDGER_HASHES_KEY
from clerk_sync.core.message_auth import MessageAuthenticator
from clerk_sync.core.queue import (
    APPLY_EVENT_TASK,
    LEDGER_DUE_KEY,
    LEDGER_MESSAGES_KEY,
    QueuedEvent,
    broker_configuration,
)
from clerk_sync.core.settings import Settings
from tests.conftest import MESSAGE_SECRET, queue_length
from tests.ingress.conftest import decode_message, ledger_ids

VARYING_HEADERS = {"id", "root_id", "origin", "ignore_result"}


def raw_messages(client: redis.Redis[bytes], queue: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in client.lrange(queue, 0, -1)]


def test_publish_queues_the_message_send_task_would_and_the_ledger_entry(
    settings: Settings, redis_client: redis.Redis[bytes]
) -> None:
    event = QueuedEvent(
        "msg_1",
        '{"type": "organization.created", "data": {}}',
        1_700_000_000_000,
        "organization.created",
    )
    publisher = Publisher(settings)
    publisher.publish(event)
    [ours] = raw_messages(redis_client, settings.queue_name)
    assert ledger_ids(redis_client) == {"msg_1"}
    event = publisher.sign(event)
    assert event.mac == MessageAuthenticator([MESSAGE_SECRET]).mac(
        event.svix_id, event.payload, event.received_at_ms
    )
    assert json.loads(redis_client.hget(LEDGER_MESSAGES_KEY, "msg_1")) == [
        event.payload,
        event.received_at_ms,
        event.mac,
    ]
    due = redis_client.zscore(LEDGER_DUE_KEY, "msg_1")
    assert due is not None
    assert abs(due - (time.time() + settings.ledger_redeliver_after_seconds)) < 60
    redis_client.delete(settings.queue_name)

    celery = Celery("reference", set_as_current=False)
    celery.conf.update(broker_configuration(settings))
    celery.send_task(
        APPLY_EVENT_TASK, args=event.task_args(), queue=settings.queue_name, argsrepr="x"
    )
    [reference] = raw_messages(redis_client, settings.queue_name)

    assert set(ours) == set(reference)
    for name in ("content-type", "content-encoding"):
        assert ours[name] == reference[name], name
    assert json.loads(base64.b64decode(ours["body"])) == json.loads(
        base64.b64decode(reference["body"])
    )
    assert set(ours["headers"]) == set(reference["headers"])
    for name in set(ours["headers"]) - VARYING_HEADERS - {"argsrepr"}:
        assert ours["headers"][name] == reference["headers"][name], name
    assert ours["headers"]["id"] == ours["headers"]["root_id"]
    assert ours["headers"]["argsrepr"] == event.argsrepr()
    assert (
        ours["headers"]["argsrepr"]
        == "('msg_1', 'organization.created', <payload of 44 characters>)"
    )
    assert event.payload not in ours["headers"]["argsrepr"], "no payload in the repr"
    assert event.mac not in ours["headers"]["argsrepr"]
    for name in ("delivery_info", "priority", "body_encoding", "delivery_mode"):
        assert ours["properties"][name] == reference["properties"][name], name
    assert ours["properties"]["correlation_id"] == ours["headers"]["id"]
    message = decode_message(json.dumps(ours).encode())
    assert message.headers["task"] == APPLY_EVENT_TASK
    assert message.args == event.task_args()


@pytest.mark.parametrize(
    ("svix_id", "task_id"),
    [("msg_3", "task-3"), ("msg_\"{0}\\\u2028'", 'task "{id}" \\')],
    ids=["plain", "needs-escaping"],
)
def test_a_templated_message_equals_the_one_celery_builds_for_the_same_task(
    settings: Settings, svix_id: str, task_id: str
) -> None:
    """First deliveries are filled into a per-process template; only the delivery tag (unique
    per message) may differ from the message Celery and kombu build field by field, whatever
    characters the ids hold (quotes, backslashes and braces must not break the JSON or the
    template)."""
    celery = Celery("reference", set_as_current=False)
    celery.conf.update(broker_configuration(settings))
    messages = RedisTaskMessages(celery, settings.queue_name)
    event = QueuedEvent(svix_id, '{"type": "user.created", "data": {"név": "Zoë"}}', 1_700_000_000)
    key, templated = messages.build(event, task_id=task_id)
    celery_key, built = messages.build_with_celery(event, task_id=task_id)
    ours, reference = json.loads(templated), json.loads(built)
    assert key == celery_key == settings.queue_name
    assert ours["properties"].pop("delivery_tag") != reference["properties"].pop("delivery_tag")
    ours["body"] = json.loads(base64.b64decode(ours["body"]))
    reference["body"] = json.loads(base64.b64decode(reference["body"]))
    assert ours == reference
    assert ours["body"][0] == event.task_args()


def test_send_carries_the_task_id_retries_and_countdown_of_a_retry(
    settings: Settings, redis_client: redis.Redis[bytes]
) -> None:
    publisher = Publisher(settings)
    event = QueuedEvent("msg_2", "{}", 1)
    before = time.time()
    publisher.send(event, task_id="task-1", retries=3, countdown=5.0)
    assert ledger_ids(redis_client) == set(), "send leaves the ledger alone"
    [raw] = raw_messages(redis_client, settings.queue_name)
    assert raw["headers"]["id"] == "task-1"
    assert raw["headers"]["retries"] == 3
    eta = datetime.fromisoformat(raw["headers"]["eta"]).timestamp()
    assert before + 4 < eta < time.time() + 6
    publisher.send(event)
    assert queue_length(redis_client, settings.queue_name) == 2


def test_one_message_list_per_queue_and_no_routing_keys(
    settings: Settings, redis_client: redis.Redis[bytes]
) -> None:
    """The publish path touches nothing but the queue list and the ledger (no kombu binding
    look-ups or declarations per request)."""
    publisher = Publisher(settings)
    for number in range(3):
        publisher.publish(QueuedEvent(f"msg_{number}", "{}", 1))
    assert sorted(key.decode() for key in redis_client.keys("*")) == sorted(
        [settings.queue_name, LEDGER_DUE_KEY, LEDGER_MESSAGES_KEY, LEDGER_HASHES_KEY]
    )


def test_first_deliveries_get_fresh_version_4_uuids_in_every_forked_process(
    settings: Settings,
) -> None:
    """The ids come from the ``random`` module, not ``os.urandom``: they must still be valid
    version 4 UUIDs, and a gunicorn worker forked from the same parent must not repeat its
    siblings' sequence (``random`` reseeds itself in a forked child)."""
    celery = Celery("reference", set_as_current=False)
    celery.conf.update(broker_configuration(settings))
    messages = RedisTaskMessages(celery, settings.queue_name)
    event = QueuedEvent("msg_4", "{}", 1)

    def task_ids(count: int) -> list[str]:
        return [json.loads(messages.build(event)[1])["headers"]["id"] for _ in range(count)]

    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the forked child
        os.close(read_end)
        os.write(write_end, json.dumps(task_ids(100)).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        childs = json.loads(pipe.read())
    os.waitpid(child, 0)
    ours = task_ids(100)

    assert len(set(ours) | set(childs)) == 200
    for task_id in ours + childs:
        parsed = uuid.UUID(task_id)
        assert (str(parsed), parsed.version, parsed.variant) == (task_id, 4, uuid.RFC_4122)
    assert uuid.UUID(random_uuid4()).version == 4
