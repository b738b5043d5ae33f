"""Fixtures for tests that feed a real worker through the real ingress app."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Engine, select

from clerk_sync.settings import Settings
from ingress import create_app
from models.tables import webhook_events
from tests.clerk_api import FakeClerk
from tests.factories import body_of, new_svix_id, signed_headers

Send = Callable[..., str]


@pytest.fixture
def send(settings: Settings) -> Send:
    """Post a payload to the ingress app (real Redis broker); returns its svix-id."""
    client = create_app(settings).test_client()

    def post(payload: dict[str, Any], svix_id: str | None = None) -> str:
        svix_id = svix_id or new_svix_id()
        body = body_of(payload)
        headers = signed_headers(settings.webhook_secrets[0], body, svix_id=svix_id)
        response = client.post("/webhook/clerk", data=body, headers=headers)
        assert response.status_code == 202, response.get_json()
        return svix_id

    return post


def inbox_row(engine: Engine, svix_id: str) -> dict[str, Any] | None:
    with engine.connect() as connection:
        row = connection.execute(
            select(webhook_events).where(webhook_events.c.svix_id == svix_id)
        ).one_or_none()
    return None if row is None else dict(row._mapping)


@pytest.fixture
def clerk() -> Iterator[FakeClerk]:
    """A fake Clerk Backend API on 127.0.0.1 (``tests.clerk_api``), empty until loaded."""
    fake = FakeClerk().start()
    yield fake
    fake.stop()
