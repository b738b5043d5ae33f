"""Fixtures for tests that feed a real worker through the real ingress app."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, Engine, text

from tests.clerk_api import FakeClerk


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
