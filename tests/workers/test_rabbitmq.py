"""Workers on RabbitMQ (issue #20), batched and one task per event: a webhook accepted is
applied; a transient failure is retried with a countdown (Celery's native delayed delivery: a
quorum queue has no global QoS) until applied, or dead-lettered once its retries are spent; a
message without a valid MAC is never applied. Real worker processes, the machine's RabbitMQ."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import Engine

from clerk_sync.core.message_auth import MessageAuthenticator
from clerk_sync.core.queue import APPLY_EVENT_TASK, broker_configuration
from clerk_sync.core.settings import Settings
from ingress import create_app
from tests.conftest import WorkerProcess, inbox_row, wait_for
from tests.factories import body_of, event, new_svix_id, organization_data, signed_headers
from tests.rabbitmq import amqp_settings, queue_depth
from tests.servers import answers, free_port
from tests.workers.test_forged_messages import ATTACKER_KEY, forged_count, organization_row

__all__ = ["amqp_settings"]

pytestmark = pytest.mark.worker

BATCH_SIZES = pytest.mark.parametrize("batch_size", [1, 100], ids=["one-by-one", "batched"])


def post(settings: Settings) -> Callable[[dict[str, Any]], str]:
    client = create_app(settings).test_client()

    def send(payload: dict[str, Any]) -> str:
        svix_id = new_svix_id()
        body = body_of(payload)
        headers = signed_headers(settings.webhook_secrets[0], body, svix_id=svix_id)
        response = client.post("/webhook/clerk", data=body, headers=headers)
        assert response.status_code == 202, response.get_json()
        return svix_id

    return send


def status_of(engine: Engine, svix_id: str, status: str) -> Callable[[], Any]:
    return lambda: (row := inbox_row(engine, svix_id)) and row["status"] == status and row


@BATCH_SIZES
def test_a_webhook_accepted_on_rabbitmq_is_applied_and_acknowledged(
    amqp_settings: Settings,
    pg_engine: Engine,
    start_worker: Callable[..., WorkerProcess],
    batch_size: int,
) -> None:
    settings = replace(amqp_settings, batch_size=batch_size)
    send = post(settings)
    svix_ids = [send(event("organization.created", organization_data())) for _ in range(20)]
    start_worker(settings)
    for svix_id in svix_ids:
        wait_for(status_of(pg_engine, svix_id, "applied"), 60)
    wait_for(lambda: queue_depth(settings) == (0, 1), 30)


@BATCH_SIZES
def test_transient_failures_on_rabbitmq_are_retried_until_applied_or_dead_lettered(
    amqp_settings: Settings,
    pg_engine: Engine,
    start_worker: Callable[..., WorkerProcess],
    hold_organization_lock: Any,
    batch_size: int,
) -> None:
    """Two organizations' locks held from outside (their lock timeouts expire: a real
    transient failure). One is released while its event is being retried: applied. The other
    is never released: its event is dead-lettered after ``max_retries``."""
    settings = replace(amqp_settings, batch_size=batch_size, max_retries=3)
    release = hold_organization_lock("org_busy")
    hold_organization_lock("org_stuck")
    send = post(settings)
    busy = send(event("organization.created", organization_data("org_busy", name="Busy")))
    stuck = send(event("organization.created", organization_data("org_stuck", name="Stuck")))
    started = time.monotonic()
    worker = start_worker(settings)

    wait_for(lambda: (row := inbox_row(pg_engine, busy)) and row["last_error"], 60)
    release()
    applied = wait_for(status_of(pg_engine, busy, "applied"), 60)
    assert applied["attempts"] > 1
    dead = wait_for(status_of(pg_engine, stuck, "dead"), 90)
    assert "LockNotAvailable" in dead["last_error"]
    assert dead["attempts"] >= settings.max_retries
    assert time.monotonic() - started > settings.retry_backoff_seconds
    assert organization_row(pg_engine, "org_stuck") is None
    assert organization_row(pg_engine, "org_busy") is not None
    assert "retry" in worker.log().lower()
    wait_for(lambda: queue_depth(settings)[0] == 0, 30)


@BATCH_SIZES
def test_an_unexpected_error_on_rabbitmq_dead_letters_the_event(
    amqp_settings: Settings,
    pg_engine: Engine,
    start_worker: Callable[..., WorkerProcess],
    batch_size: int,
) -> None:
    """Without a ledger nothing would publish an event again after an error that is not
    transient, so it is dead-lettered at once, with its error (visible, replayable), never
    acknowledged and dropped. An organization id longer than its column (64) is such an error
    on PostgreSQL; an event after it is applied."""
    settings = replace(amqp_settings, batch_size=batch_size)
    send = post(settings)
    too_long = send(event("organization.created", organization_data("org_" + "x" * 80)))
    fine = send(event("organization.created", organization_data()))
    start_worker(settings)
    row = wait_for(status_of(pg_engine, too_long, "dead"), 60)
    assert "StringDataRightTruncation" in row["last_error"], row["last_error"]
    wait_for(status_of(pg_engine, fine, "applied"), 60)
    wait_for(lambda: queue_depth(settings) == (0, 1), 30)


@BATCH_SIZES
def test_messages_on_rabbitmq_without_a_valid_mac_are_never_applied(
    amqp_settings: Settings,
    pg_engine: Engine,
    start_worker: Callable[..., WorkerProcess],
    batch_size: int,
) -> None:
    """Published with Celery's own ``send_task`` by someone who can write to the queue: a MAC
    under a guessed key, and no MAC at all. Refused, counted, acknowledged (not redelivered);
    a genuine event after them is applied."""
    settings = replace(amqp_settings, batch_size=batch_size, worker_metrics_port=free_port())
    attacker = Celery("attacker", set_as_current=False)
    attacker.conf.update(broker_configuration(settings))
    payload = body_of(event("organization.created", organization_data("org_pushed")))
    ids = [new_svix_id() for _ in range(2)]
    received_at_ms = int(time.time() * 1000)
    guessed = MessageAuthenticator([ATTACKER_KEY]).mac(ids[0], payload, received_at_ms)
    attacker.send_task(
        APPLY_EVENT_TASK, args=[ids[0], payload, received_at_ms, guessed], queue=settings.queue_name
    )
    attacker.send_task(
        APPLY_EVENT_TASK, args=[ids[1], payload, received_at_ms], queue=settings.queue_name
    )
    assert queue_depth(settings)[0] == 2

    start_worker(settings)
    port = settings.worker_metrics_port
    wait_for(lambda: answers(f"http://127.0.0.1:{port}/metrics"))
    wait_for(lambda: forged_count(port) == 2, 30)
    genuine = post(settings)(event("organization.created", organization_data("org_genuine")))
    wait_for(status_of(pg_engine, genuine, "applied"), 60)
    assert organization_row(pg_engine, "org_pushed") is None
    assert all(inbox_row(pg_engine, svix_id) is None for svix_id in ids)
    assert queue_depth(settings) == (0, 1)
    assert forged_count(port) == 2, "refused once each: acknowledged, not redelivered"
