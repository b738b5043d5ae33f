"""Fixtures for tests that feed a real worker through the real ingress app."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Connection, Engine, text

from clerk_sync.core.settings import Settings
from ingress import create_app
from tests.clerk_api import FakeClerk
from tests.conftest import FLOWER_AUTH, start_flower, wait_for
from tests.faults import IngressServer, signed_request
from tests.models.histories import Delivery
from tests.servers import free_port, stop_process


def flower_get(port: int, path: str) -> Any:
    """A document of Flower's API (with basic auth), or None when it does not answer 200."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Authorization": FLOWER_AUTH}
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return json.loads(response.read())
    except OSError:
        return None


@pytest.fixture
def flower(settings: Settings, redis_client: redis.Redis[bytes], tmp_path: Path) -> Iterator[int]:
    """A real Flower with basic auth (and no message secret), subscribed to task events;
    yields its port."""
    port = free_port()
    patterns_before = redis_client.pubsub_numpat()
    process = start_flower(settings, port, tmp_path / "flower.log")
    try:
        wait_for(lambda: flower_get(port, "/api/tasks") is not None, 60, 0.2)
        wait_for(lambda: redis_client.pubsub_numpat() > patterns_before, 60)
        yield port
    finally:
        stop_process(process)


@pytest.fixture
def clerk() -> Iterator[FakeClerk]:
    """A fake Clerk Backend API on 127.0.0.1 (``tests.clerk_api``), empty until loaded."""
    fake = FakeClerk().start()
    yield fake
    fake.stop()


LOCK = text("SELECT pg_advisory_lock(hashtextextended(:key, 0))")
UNLOCK_ALL = text("SELECT pg_advisory_unlock_all()")


@pytest.fixture
def hold_organization_lock(pg_engine: Engine) -> Iterator[Callable[[str], Callable[[], Any]]]:
    """Take the worker's per-organization lock from outside, as a long transaction would (the
    worker's ``lock_timeout`` then expires: a real transient failure); returns a function that
    releases it."""
    held: list[Connection] = []

    def hold(organization_id: str) -> Callable[[], Any]:
        connection = pg_engine.connect()
        connection.execute(LOCK, {"key": f"organization:{organization_id}"})
        held.append(connection)
        return lambda: connection.execute(UNLOCK_ALL)

    yield hold
    for connection in held:
        connection.execute(UNLOCK_ALL)
        connection.close()


@pytest.fixture
def start_ingress(tmp_path: Path) -> Iterator[Callable[..., IngressServer]]:
    """Start real ingress servers (gunicorn) with these settings; all stopped afterwards."""
    started: list[IngressServer] = []

    def start(settings: Settings, **options: Any) -> IngressServer:
        server = IngressServer(settings, tmp_path / f"ingress-{len(started)}.log", **options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def enqueue_through(settings: Settings) -> Callable[[list[Delivery]], None]:
    """Queue deliveries through the real ingress app (in process) on the settings' broker."""
    client = create_app(settings).test_client()

    def send(deliveries: list[Delivery]) -> None:
        for delivery in deliveries:
            body, headers = signed_request(settings.webhook_secrets[0], delivery)
            response = client.post("/webhook/clerk", data=body, headers=headers)
            assert response.status_code == 202, response.get_json()

    return send
