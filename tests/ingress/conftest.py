"""Fixtures for the ingress tests: the real Flask app on the real Redis broker (no fakes).

Helpers here read back what the ingress put into Redis: the kombu messages in the test queue and
the ledger of accepted events, so every test can say exactly what was (or was not) enqueued.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from clerk_sync.core.queue import LEDGER_DUE_KEY, LEDGER_MESSAGES_KEY
from clerk_sync.core.settings import Settings
from ingress import create_app
from tests.conftest import queue_length
from tests.factories import body_of, event, organization_data, signed_headers

WEBHOOK_PATH = "/webhook/clerk"
CLOSED_BROKER_URL = "redis://127.0.0.1:1/0"
"""Nothing listens on port 1: connecting is refused at once."""


@dataclass(frozen=True)
class QueuedMessage:
    """One kombu message from the Redis list, decoded down to the Celery task call."""

    headers: dict[str, Any]
    properties: dict[str, Any]
    args: list[Any]
    kwargs: dict[str, Any]


def decode_message(raw: bytes) -> QueuedMessage:
    """A kombu Redis message is JSON whose ``body`` is base64 of the serialized Celery body;
    protocol 2 bodies are ``[args, kwargs, embed]``."""
    envelope = json.loads(raw)
    assert envelope["properties"]["body_encoding"] == "base64"
    assert envelope["content-type"] == "application/json"
    args, kwargs, _embed = json.loads(base64.b64decode(envelope["body"]))
    return QueuedMessage(envelope["headers"], envelope["properties"], args, kwargs)


def queued_messages(client: redis.Redis[bytes], queue_name: str) -> list[QueuedMessage]:
    return [decode_message(raw) for raw in client.lrange(queue_name, 0, -1)]


def ledger_ids(client: redis.Redis[bytes]) -> set[str]:
    """svix ids in the ledger (the due-zset and the messages-hash must agree)."""
    due = {member.decode() for member in client.zrange(LEDGER_DUE_KEY, 0, -1)}
    messages = {key.decode() for key in client.hkeys(LEDGER_MESSAGES_KEY)}
    assert due == messages
    return due


def assert_nothing_enqueued(client: redis.Redis[bytes], settings: Settings) -> None:
    assert queue_length(client, settings.queue_name) == 0
    assert ledger_ids(client) == set()


def assert_error(response: TestResponse, status: int, code: str) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    document = response.get_json()
    assert isinstance(document, dict), response.get_data(as_text=True)
    assert document["error"] == code, document


def hmac_signature(secret: str, svix_id: str, timestamp: str, body: bytes) -> str:
    """A ``v1`` signature over raw bytes (``Webhook.sign`` only takes text)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{svix_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def org_body(event_type: str = "organization.created") -> str:
    return body_of(event(event_type, organization_data()))


Post = Callable[..., TestResponse]


@pytest.fixture
def app(settings: Settings) -> Flask:
    return create_app(settings)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def post(client: FlaskClient) -> Post:
    """POST raw bytes/text to the webhook with the given headers."""

    def send(body: str | bytes, headers: Mapping[str, str], **kwargs: Any) -> TestResponse:
        data = body.encode() if isinstance(body, str) else body
        return client.post(WEBHOOK_PATH, data=data, headers=dict(headers), **kwargs)

    return send


@pytest.fixture
def post_signed(post: Post, settings: Settings) -> Post:
    """POST a body signed with the first configured secret (extra kwargs go to signed_headers)."""

    def send(body: str, secret: str | None = None, **kwargs: Any) -> TestResponse:
        return post(body, signed_headers(secret or settings.webhook_secrets[0], body, **kwargs))

    return send
