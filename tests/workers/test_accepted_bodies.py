"""Every accepted body ends somewhere (issue #18): a body no worker can read ends ``dead`` with
its reason; an event the sweeper re-published ``CLERK_SYNC_LEDGER_MAX_REDELIVERIES`` times is
dead-lettered and dropped from the ledger; a request replayed 300 times is queued once; a second
body under an svix id is recorded (never applied), whether the ingress or the worker sees it."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, select

from clerk_sync.broker.publisher import Publisher
from clerk_sync.core.ledger_scripts import (
    LEDGER_CONFLICTS_KEY,
    LEDGER_FINISHED_KEY,
    LEDGER_HASHES_KEY,
    LEDGER_REDELIVERIES_KEY,
)
from clerk_sync.core.queue import LEDGER_DUE_KEY, LEDGER_MESSAGES_KEY, QueuedEvent
from clerk_sync.core.settings import Settings
from ingress import create_app
from models.conflicts import conflict_id
from models.payload_hash import payload_hash
from models.tables import organizations, webhook_events
from tests.conftest import inbox_row, queue_length, wait_for
from tests.factories import body_of, event, new_svix_id, organization_data, signed_headers
from workers.app import create_celery_app, sweep

pytestmark = pytest.mark.worker


def overdue(settings: Settings, rounds: int = 1) -> float:
    return time.time() + rounds * (settings.ledger_redeliver_after_seconds + 1)


def ledger_is_empty(client: redis.Redis[bytes]) -> bool:
    return (
        client.zcard(LEDGER_DUE_KEY) == 0
        and client.hlen(LEDGER_MESSAGES_KEY) == 0
        and client.hlen(LEDGER_REDELIVERIES_KEY) == 0
    )


def deep_body(depth: int = 990) -> str:
    """An organization event with a float nested ``depth`` levels down in its metadata: orjson
    reads it, ``json.loads`` fails near 1000 levels less the caller's stack."""
    data = organization_data()
    text = body_of(event("organization.created", data))
    return text.replace(
        '"public_metadata":{}', '"public_metadata":{"x":' + "[" * depth + "1.5" + "]" * depth + "}"
    )


def organization_names(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return list(connection.execute(select(organizations.c.name)).scalars())


def test_a_body_no_worker_can_read_ends_dead_through_the_ledger_and_sweeper(
    settings: Settings, pg_engine: Engine, redis_client: redis.Redis[bytes], start_worker: Any
) -> None:
    """Accepted as an ingress without the depth check did (the publisher's own transaction),
    its message lost, re-published by the sweeper: the worker dead-letters it with the reason
    and drops it from the ledger (before: ``RecursionError``, no inbox row, re-published every
    10 minutes for ever)."""
    body = deep_body()
    assert '"public_metadata":{"x":[[[' in body
    svix_id = new_svix_id()
    Publisher(settings).publish(QueuedEvent(svix_id, body, int(time.time() * 1000)))
    redis_client.delete(settings.queue_name)
    runtime = create_celery_app(settings).clerk_sync_runtime
    assert sweep(runtime, now=overdue(settings)) == 1

    start_worker(settings)
    row = wait_for(
        lambda: (row := inbox_row(pg_engine, svix_id)) and row["status"] == "dead" and row
    )
    assert "PayloadTooDeepError" in row["last_error"]
    assert row["payload"] == body
    wait_for(lambda: ledger_is_empty(redis_client), 10)


def test_the_sweeper_dead_letters_an_event_it_re_published_n_times(
    settings: Settings, pg_engine: Engine, redis_client: redis.Redis[bytes], caplog: Any
) -> None:
    settings = dataclasses.replace(settings, ledger_max_redeliveries=3)
    svix_id = new_svix_id()
    body = body_of(event("organization.created", organization_data()))
    Publisher(settings).publish(QueuedEvent(svix_id, body, int(time.time() * 1000)))
    runtime = create_celery_app(settings).clerk_sync_runtime
    for round_ in range(1, 4):
        redis_client.delete(settings.queue_name)  # every copy lost (a worker dying on it)
        assert sweep(runtime, now=overdue(settings, round_)) == 1
        assert queue_length(redis_client, settings.queue_name) == 1
    redis_client.delete(settings.queue_name)
    assert inbox_row(pg_engine, svix_id) is None

    with caplog.at_level(logging.ERROR, logger="clerk_sync.worker"):
        assert sweep(runtime, now=overdue(settings, 4)) == 0
    assert queue_length(redis_client, settings.queue_name) == 0
    assert ledger_is_empty(redis_client)
    row = inbox_row(pg_engine, svix_id)
    assert row is not None
    assert row["status"] == "dead"
    assert "re-published this event 3 times" in row["last_error"]
    assert row["payload"] == body
    assert any(record.levelno == logging.ERROR for record in caplog.records)
    assert sweep(runtime, now=overdue(settings, 5)) == 0


def test_a_request_replayed_300_times_is_queued_once(
    settings: Settings, pg_engine: Engine, redis_client: redis.Redis[bytes], start_worker: Any
) -> None:
    """A captured request replayed within Svix's 5-minute tolerance: one message, every copy
    answered 202; and once the event is finished, none at all."""
    client = create_app(settings).test_client()
    body = body_of(event("organization.created", organization_data(name="Replayed")))
    svix_id = new_svix_id()
    headers = signed_headers(settings.webhook_secrets[0], body, svix_id=svix_id)
    for _ in range(300):
        assert client.post("/webhook/clerk", data=body, headers=headers).status_code == 202
    assert queue_length(redis_client, settings.queue_name) == 1
    assert redis_client.zcard(LEDGER_DUE_KEY) == 1

    start_worker(settings)
    wait_for(lambda: (row := inbox_row(pg_engine, svix_id)) and row["status"] == "applied")
    wait_for(lambda: ledger_is_empty(redis_client), 10)
    for _ in range(300):
        assert client.post("/webhook/clerk", data=body, headers=headers).status_code == 202
    assert queue_length(redis_client, settings.queue_name) == 0
    assert ledger_is_empty(redis_client), "finished recently: not queued again"
    row = inbox_row(pg_engine, svix_id)
    assert row is not None
    assert (row["status"], row["attempts"]) == ("applied", 1)


def two_bodies(org_id: str) -> tuple[str, str]:
    first = body_of(event("organization.created", organization_data(org_id, name="First Name")))
    second = body_of(event("organization.created", organization_data(org_id, name="Sneaky Name")))
    return first, second


def test_a_second_body_seen_by_the_ingress_is_recorded_never_applied(
    settings: Settings,
    pg_engine: Engine,
    redis_client: redis.Redis[bytes],
    start_worker: Any,
    caplog: Any,
) -> None:
    app = create_app(settings)
    client = app.test_client()
    first, second = two_bodies("org_conflict_ingress")
    svix_id = new_svix_id()
    secret = settings.webhook_secrets[0]

    def post(body: str) -> int:
        headers = signed_headers(secret, body, svix_id=svix_id)
        return client.post("/webhook/clerk", data=body, headers=headers).status_code

    assert post(first) == 202
    with caplog.at_level(logging.ERROR, logger="clerk_sync.ingress"):
        for _ in range(5):
            assert post(second) == 202
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert errors
    assert all("Sneaky" not in str(record.__dict__) for record in errors), "no payload logged"
    registry = app.extensions["clerk_sync.metrics"].registry
    counted = registry.get_sample_value(
        "clerk_sync_ingress_requests_total", {"outcome": "conflict"}
    )
    assert counted == 5
    assert queue_length(redis_client, settings.queue_name) == 1
    stored = redis_client.hget(LEDGER_MESSAGES_KEY, svix_id)
    assert stored is not None
    assert json.loads(stored)[0] == first, "the ledger keeps the first body"
    assert redis_client.hlen(LEDGER_CONFLICTS_KEY) == 1, "one record per distinct body"

    start_worker(settings)
    wait_for(lambda: (row := inbox_row(pg_engine, svix_id)) and row["status"] == "applied")
    sweep(create_celery_app(settings).clerk_sync_runtime)
    assert redis_client.hlen(LEDGER_CONFLICTS_KEY) == 0
    assert_conflict_recorded(pg_engine, svix_id, first, second)


def test_a_second_body_seen_by_the_worker_is_recorded_never_applied(
    settings: Settings, pg_engine: Engine, redis_client: redis.Redis[bytes], start_worker: Any
) -> None:
    """The first body is finished and Redis no longer remembers it (past
    ``REMEMBER_FINISHED_SECONDS``): the ingress queues the second, the worker tells the bodies
    apart by their hashes."""
    client = create_app(settings).test_client()
    first, second = two_bodies("org_conflict_worker")
    svix_id = new_svix_id()
    secret = settings.webhook_secrets[0]
    worker = start_worker(settings)
    headers = signed_headers(secret, first, svix_id=svix_id)
    assert client.post("/webhook/clerk", data=first, headers=headers).status_code == 202
    wait_for(lambda: (row := inbox_row(pg_engine, svix_id)) and row["status"] == "applied")
    wait_for(lambda: ledger_is_empty(redis_client), 10)
    redis_client.delete(LEDGER_HASHES_KEY, LEDGER_FINISHED_KEY)

    headers = signed_headers(secret, second, svix_id=svix_id)
    assert client.post("/webhook/clerk", data=second, headers=headers).status_code == 202
    conflict = conflict_id(svix_id, payload_hash(second))
    wait_for(lambda: inbox_row(pg_engine, conflict) is not None)
    assert_conflict_recorded(pg_engine, svix_id, first, second)
    wait_for(lambda: ledger_is_empty(redis_client), 10)
    assert "svix id reused with a different body" in worker.log()
    assert "Sneaky" not in worker.log()


def assert_conflict_recorded(engine: Engine, svix_id: str, first: str, second: str) -> None:
    original = inbox_row(engine, svix_id)
    assert original is not None
    assert (original["status"], original["payload"]) == ("applied", first)
    assert original["payload_hash"] == payload_hash(first)
    assert original["conflict_of"] is None
    recorded = inbox_row(engine, conflict_id(svix_id, payload_hash(second)))
    assert recorded is not None
    assert recorded["status"] == "conflict"
    assert recorded["conflict_of"] == svix_id
    assert recorded["payload"] == second
    assert recorded["payload_hash"] == payload_hash(second)
    assert svix_id in recorded["last_error"]
    with engine.connect() as connection:
        conflicts = connection.execute(
            select(webhook_events.c.svix_id).where(webhook_events.c.conflict_of == svix_id)
        ).all()
    assert len(conflicts) == 1
    assert organization_names(engine) == ["First Name"]
