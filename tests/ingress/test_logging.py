"""Signing secrets must never reach a log line or a response body."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest
import redis

from clerk_sync.core.settings import Settings
from ingress import create_app
from tests.conftest import SECOND_WEBHOOK_SECRET, WEBHOOK_SECRET
from tests.factories import signed_headers
from tests.ingress.conftest import CLOSED_BROKER_URL, WEBHOOK_PATH, ledger_ids, org_body

SECRET_FRAGMENTS = [
    WEBHOOK_SECRET,
    WEBHOOK_SECRET.removeprefix("whsec_"),
    SECOND_WEBHOOK_SECRET,
    SECOND_WEBHOOK_SECRET.removeprefix("whsec_"),
]


def test_secrets_never_logged_or_returned(
    settings: Settings, redis_client: redis.Redis[bytes], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    rotated = settings.with_overrides(webhook_secrets=(WEBHOOK_SECRET, SECOND_WEBHOOK_SECRET))
    client = create_app(rotated).test_client()
    down = create_app(rotated.with_overrides(broker_url=CLOSED_BROKER_URL)).test_client()
    small = create_app(rotated.with_overrides(max_body_bytes=64)).test_client()

    body = org_body()
    good = signed_headers(WEBHOOK_SECRET, body)
    responses = [
        client.post(WEBHOOK_PATH, data=body, headers=good),
        client.post(WEBHOOK_PATH, data=body, headers=signed_headers(SECOND_WEBHOOK_SECRET, body)),
        client.post(WEBHOOK_PATH, data=body + " ", headers=good),
        client.post(WEBHOOK_PATH, data=body, headers={**good, "svix-signature": "v1,!!!"}),
        client.post(WEBHOOK_PATH, data=body, headers={**good, "svix-signature": "v1"}),
        client.post(WEBHOOK_PATH, data=body, headers={"svix-id": "msg_x"}),
        client.post(
            WEBHOOK_PATH,
            data=body,
            headers=signed_headers(WEBHOOK_SECRET, body, at=datetime.now(UTC) - timedelta(hours=1)),
        ),
        client.post(WEBHOOK_PATH, data="[]", headers=signed_headers(WEBHOOK_SECRET, "[]")),
        client.post(WEBHOOK_PATH, data=b"\xff" * 10, headers=good),
        client.get(WEBHOOK_PATH),
        client.get("/readyz"),
        client.get("/healthz"),
        down.post(WEBHOOK_PATH, data=body, headers=signed_headers(WEBHOOK_SECRET, body)),
        down.get("/readyz"),
        small.post(WEBHOOK_PATH, data=body, headers=good),
    ]
    statuses = [response.status_code for response in responses]
    assert statuses == [202, 202, 400, 400, 400, 400, 400, 400, 400, 405, 200, 200, 503, 503, 413]
    assert len(ledger_ids(redis_client)) == 2

    texts = [caplog.text, *(response.get_data(as_text=True) for response in responses)]
    texts += [str(dict(response.headers)) for response in responses]
    texts += [repr(settings), repr(rotated), str(rotated)]
    assert caplog.records, "the ingress logs its decisions"
    for fragment in SECRET_FRAGMENTS:
        for text in texts:
            assert fragment not in text
