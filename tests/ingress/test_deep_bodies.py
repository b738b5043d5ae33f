"""Every signed body the ingress accepts, a worker can read: both read payloads with
``read_payload`` and its one depth limit, so a body nested too deep is answered ``400`` here
instead of accepted and then unreadable by a worker (issue #18: a body nested ~990 levels with
a float got ``202``, and the worker's ``json.loads`` failed with ``RecursionError``)."""

from __future__ import annotations

import json

import pytest
import redis

from clerk_sync.core.json_reading import MAX_DEPTH
from clerk_sync.core.settings import Settings
from tests.ingress.conftest import Post, assert_error, assert_nothing_enqueued, queued_messages


def nested(depth: int, leaf: str = "1.5") -> str:
    """An event whose ``data`` nests ``depth`` arrays around ``leaf`` (the document itself is
    one more level)."""
    return '{"type": "organization.created", "data": ' + "[" * depth + leaf + "]" * depth + "}"


@pytest.mark.parametrize(
    "body",
    [
        nested(990),
        nested(990, "1"),
        nested(MAX_DEPTH),
        "[" * 100_000 + "]" * 100_000,
        nested(100_000),
    ],
    ids=["990-float", "990-int", "one-over-the-limit", "100000-bare", "100000-in-data"],
)
def test_a_body_nested_too_deep_is_refused(
    body: str, post_signed: Post, settings: Settings, redis_client: redis.Redis[bytes]
) -> None:
    assert_error(post_signed(body), 400, "payload_too_deep")
    assert_nothing_enqueued(redis_client, settings)


@pytest.mark.parametrize("leaf", ["1.5", "1", "NaN", "123456789012345678901234567890"])
def test_a_body_at_the_limit_is_queued_as_json_reads_it(
    leaf: str, post_signed: Post, settings: Settings, redis_client: redis.Redis[bytes]
) -> None:
    body = nested(MAX_DEPTH - 1, leaf)
    response = post_signed(body)
    assert response.status_code == 202, response.get_json()
    (message,) = queued_messages(redis_client, settings.queue_name)
    assert message.args[1] == body
    assert json.loads(message.args[1])["type"] == "organization.created"
