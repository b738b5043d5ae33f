"""The broker side of the ingress: a broker that is down means 503 (so Svix retries), never a
silent 202, and the probes tell the two cases apart."""

from __future__ import annotations

import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import redis
from flask.testing import FlaskClient

from clerk_sync.core.settings import Settings
from ingress import create_app
from tests.conftest import WEBHOOK_SECRET
from tests.factories import signed_headers
from tests.faults import RedisServer
from tests.ingress.conftest import (
    CLOSED_BROKER_URL,
    WEBHOOK_PATH,
    assert_error,
    assert_nothing_enqueued,
    ledger_ids,
    org_body,
)


@pytest.fixture
def down_client(settings: Settings) -> FlaskClient:
    return create_app(settings.with_overrides(broker_url=CLOSED_BROKER_URL)).test_client()


def test_broker_down_is_503_with_retry_after(
    down_client: FlaskClient, settings: Settings, redis_client: redis.Redis[bytes]
) -> None:
    for _ in range(2):
        body = org_body()
        started = time.monotonic()
        response = down_client.post(
            WEBHOOK_PATH, data=body, headers=signed_headers(WEBHOOK_SECRET, body)
        )
        assert time.monotonic() - started < 5
        assert_error(response, 503, "broker_unavailable")
        retry_after = response.headers.get("Retry-After")
        assert retry_after is not None
        assert retry_after.isdigit()
        assert int(retry_after) > 0
    # The real Redis (where a working broker would have put it) holds nothing either.
    assert_nothing_enqueued(redis_client, settings)


def test_broker_down_still_refuses_bad_requests_first(
    down_client: FlaskClient, settings: Settings, redis_client: redis.Redis[bytes]
) -> None:
    """Verification does not need the broker: a forged request is 400, not 503."""
    body = org_body()
    headers = signed_headers(WEBHOOK_SECRET, body)
    assert_error(
        down_client.post(WEBHOOK_PATH, data=body + " ", headers=headers), 400, "invalid_signature"
    )
    assert_nothing_enqueued(redis_client, settings)


def test_probes_with_broker_down(down_client: FlaskClient) -> None:
    assert down_client.get("/healthz").status_code == 200
    assert down_client.get("/healthz").get_json() == {"status": "ok"}
    started = time.monotonic()
    response = down_client.get("/readyz")
    assert time.monotonic() - started < 5
    assert_error(response, 503, "broker_unavailable")
    assert response.headers.get("Retry-After", "").isdigit()


def test_probes_with_real_redis(client: FlaskClient) -> None:
    assert client.get("/healthz").status_code == 200
    response = client.get("/readyz")
    assert response.status_code == 200, response.get_json()
    document = response.get_json()
    assert document["status"] == "ready"
    assert isinstance(document["durable"], bool), document


def test_recovers_once_the_broker_is_back(
    client: FlaskClient,
    down_client: FlaskClient,
    settings: Settings,
    redis_client: redis.Redis[bytes],
) -> None:
    """The retry Svix makes after a 503 (same svix-id, same body) is queued normally."""
    body = org_body()
    headers = signed_headers(WEBHOOK_SECRET, body)
    assert_error(
        down_client.post(WEBHOOK_PATH, data=body, headers=headers), 503, "broker_unavailable"
    )
    response = client.post(WEBHOOK_PATH, data=body, headers=headers)
    assert response.status_code == 202
    assert ledger_ids(redis_client) == {headers["svix-id"]}


@pytest.mark.fault
def test_a_broker_out_of_memory_gets_503_and_keeps_neither_half(
    settings: Settings, tmp_path: Path
) -> None:
    """A Redis at its ``maxmemory`` refuses the whole accept transaction (``EXECABORT``): 503,
    and neither a ledger entry without its message nor a message without its ledger entry; the
    next request, on the same thread, is accepted."""
    broker = RedisServer(tmp_path)
    broker.start()
    redis_client = broker.client()
    try:
        redis_client.config_set("maxmemory", 1)
        client = create_app(settings.with_overrides(broker_url=broker.url)).test_client()
        body = org_body()
        response = client.post(
            WEBHOOK_PATH, data=body, headers=signed_headers(WEBHOOK_SECRET, body)
        )
        assert_error(response, 503, "broker_unavailable")
        assert redis_client.dbsize() == 0

        redis_client.config_set("maxmemory", 0)
        headers = signed_headers(WEBHOOK_SECRET, body)
        response = client.post(WEBHOOK_PATH, data=body, headers=headers)
        assert response.status_code == 202
        assert ledger_ids(redis_client) == {headers["svix-id"]}
        assert redis_client.llen(settings.queue_name) == 1
    finally:
        redis_client.close()
        broker.kill()


@pytest.mark.fault
def test_a_broker_that_stops_answering_gets_503_after_the_publish_timeout(
    settings: Settings, tmp_path: Path
) -> None:
    """A broker that hangs once the connection is open (``SIGSTOP``): the accept's wait for the
    reply is bounded by the publish timeout, so the request gets 503 rather than holding its
    thread for ever, and once the broker answers again the next event is accepted.

    Every request runs on one thread, so all of them use the thread's one connection."""
    broker = RedisServer(tmp_path)
    broker.start()
    assert broker.process is not None
    redis_client = broker.client()
    broker_settings = settings.with_overrides(broker_url=broker.url)
    client = create_app(broker_settings).test_client()
    timeout = broker_settings.broker_publish_timeout_seconds

    def post() -> tuple[int, str, float]:
        body = org_body()
        headers = signed_headers(WEBHOOK_SECRET, body)
        started = time.monotonic()
        response = client.post(WEBHOOK_PATH, data=body, headers=headers)
        return response.status_code, headers["svix-id"], time.monotonic() - started

    try:
        with ThreadPoolExecutor(max_workers=1) as thread:
            status, first, _ = thread.submit(post).result(timeout=30)
            assert status == 202
            broker.process.send_signal(signal.SIGSTOP)
            try:
                status, refused, waited = thread.submit(post).result(timeout=30)
            finally:
                broker.process.send_signal(signal.SIGCONT)
            assert status == 503
            assert timeout * 0.9 <= waited < timeout + 10
            status, accepted, _ = thread.submit(post).result(timeout=30)
            assert status == 202
        # The refused event's transaction was already in the broker's socket: it ran when the
        # broker woke. Svix still retries it (503), and the worker ignores the duplicate.
        assert ledger_ids(redis_client) == {first, refused, accepted}
        assert redis_client.llen(settings.queue_name) == 3
    finally:
        redis_client.close()
        broker.kill()
