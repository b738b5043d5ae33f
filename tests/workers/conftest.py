"""Fixtures for tests that feed a real worker through the real ingress app."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.clerk_api import FakeClerk


@pytest.fixture
def clerk() -> Iterator[FakeClerk]:
    """A fake Clerk Backend API on 127.0.0.1 (``tests.clerk_api``), empty until loaded."""
    fake = FakeClerk().start()
    yield fake
    fake.stop()
