"""POST /webhook/clerk against the real Redis broker: what is accepted, what is refused, and
that a refused request never leaves anything in the queue or the ledger."""

from __future__ import annotations

import io
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient

from clerk_sync.core.queue import APPLY_EVENT_TASK, LEDGER_MESSAGES_KEY
from clerk_sync.core.settings import Settings
from ingress import create_app
from tests.conftest import SECOND_WEBHOOK_SECRET, WEBHOOK_SECRET, queue_length
from tests.factories import new_svix_id, signed_headers
from tests.ingress.conftest import (
    WEBHOOK_PATH,
    Post,
    assert_error,
    assert_nothing_enqueued,
    hmac_signature,
    ledger_ids,
    org_body,
    queued_messages,
)

WRONG_SECRET = "whsec_d3JvbmcgdGVzdCBrZXkgLSBub3QgY29uZmlndXJlZA=="


def now_seconds() -> str:
    return str(int(time.time()))


# --- accepted events -------------------------------------------------------------------------


def test_valid_event_is_queued_byte_exact(
    post: Post, settings: Settings, redis_client: redis.Redis[bytes]
) -> None:
    # Odd but valid JSON: non-ASCII, escapes, unusual spacing. The worker must get these bytes.
    body = (
        '{ "type" : "organization.created",\n  "data": {"id": "org_1", "name": "Zoë & Ünïcode 🚀",'
        ' "slug": "caf\\u00e9", "n": 1.50, "deep": {"a": [1, 2, {"b": null}]}},\t"timestamp": 1}'
    )
    svix_id = new_svix_id()
    before_ms = int(time.time() * 1000)
    response = post(body, signed_headers(WEBHOOK_SECRET, body, svix_id=svix_id))
    after_ms = int(time.time() * 1000)

    assert response.status_code == 202, response.get_data(as_text=True)
    assert response.get_data() == b"", "Svix needs only the status"

    messages = queued_messages(redis_client, settings.queue_name)
    assert len(messages) == 1
    message = messages[0]
    assert message.headers["task"] == APPLY_EVENT_TASK
    assert message.args[0] == svix_id
    assert message.args[1].encode("utf-8") == body.encode("utf-8")
    assert before_ms <= message.args[2] <= after_ms
    assert message.kwargs == {}

    assert ledger_ids(redis_client) == {svix_id}
    stored_payload, stored_received, stored_mac = json.loads(
        redis_client.hget(LEDGER_MESSAGES_KEY, svix_id)
    )
    assert stored_payload == body
    assert stored_received == message.args[2]
    assert stored_mac == message.args[3], "the entry carries the message's MAC"


def test_each_event_is_one_message(
    post_signed: Post, settings: Settings, redis_client: redis.Redis[bytes]
) -> None:
    ids = [new_svix_id() for _ in range(3)]
    for svix_id in ids:
        assert post_signed(org_body(), svix_id=svix_id).status_code == 202
    messages = queued_messages(redis_client, settings.queue_name)
    assert sorted(message.args[0] for message in messages) == sorted(ids)
    assert ledger_ids(redis_client) == set(ids)


def test_unknown_event_type_is_queued_not_filtered(
    post_signed: Post, settings: Settings, redis_client: redis.Redis[bytes]
) -> None:
    body = json.dumps({"type": "session.created", "object": "event", "data": {"id": "sess_1"}})
    svix_id = new_svix_id()
    assert post_signed(body, svix_id=svix_id).status_code == 202
    [message] = queued_messages(redis_client, settings.queue_name)
    assert message.args[:2] == [svix_id, body]


def test_standard_webhook_header_names_are_accepted(
    post: Post, settings: Settings, redis_client: redis.Redis[bytes]
) -> None:
    body = org_body()
    svix_headers = signed_headers(WEBHOOK_SECRET, body)
    headers = {
        "webhook-id": svix_headers["svix-id"],
        "webhook-timestamp": svix_headers["svix-timestamp"],
        "webhook-signature": svix_headers["svix-signature"],
    }
    response = post(body, headers)
    assert response.status_code == 202, response.get_json()
    [message] = queued_messages(redis_client, settings.queue_name)
    assert message.args[0] == svix_headers["svix-id"]


def test_timestamp_inside_tolerance_is_accepted(post_signed: Post) -> None:
    for offset in (timedelta(minutes=-4), timedelta(minutes=4)):
        response = post_signed(org_body(), at=datetime.now(UTC) + offset)
        assert response.status_code == 202, response.get_json()


# --- secret rotation -------------------------------------------------------------------------


@pytest.mark.parametrize("separator", [" ", ",", ", ", "\n"])
def test_rotation_accepts_either_secret(
    separator: str, settings: Settings, redis_client: redis.Redis[bytes]
) -> None:
    rotated = Settings.from_env(
        {"CLERK_WEBHOOK_SECRET": separator.join([WEBHOOK_SECRET, SECOND_WEBHOOK_SECRET])}
    )
    assert rotated.webhook_secrets == (WEBHOOK_SECRET, SECOND_WEBHOOK_SECRET)
    client = create_app(
        settings.with_overrides(webhook_secrets=rotated.webhook_secrets)
    ).test_client()
    ids = []
    for secret in (WEBHOOK_SECRET, SECOND_WEBHOOK_SECRET):
        body = org_body()
        headers = signed_headers(secret, body)
        response = client.post(WEBHOOK_PATH, data=body, headers=headers)
        assert response.status_code == 202, response.get_json()
        ids.append(headers["svix-id"])
    response = client.post(WEBHOOK_PATH, data=org_body(), headers=signed_headers(WRONG_SECRET, "x"))
    assert_error(response, 400, "invalid_signature")
    assert sorted(m.args[0] for m in queued_messages(redis_client, settings.queue_name)) == sorted(
        ids
    )


def test_header_with_old_and_new_signatures_is_accepted(
    post: Post, settings: Settings, redis_client: redis.Redis[bytes]
) -> None:
    """During a rotation Svix signs with every valid key: ``v1,<new> v1,<old>``."""
    body = org_body()
    svix_id = new_svix_id()
    at = datetime.now(UTC)
    old = signed_headers(WEBHOOK_SECRET, body, svix_id=svix_id, at=at)
    new = signed_headers(SECOND_WEBHOOK_SECRET, body, svix_id=svix_id, at=at)
    for signature in (
        f"{new['svix-signature']} {old['svix-signature']}",
        f"{old['svix-signature']} {new['svix-signature']}",
    ):
        response = post(body, {**old, "svix-signature": signature})
        assert response.status_code == 202, response.get_json()
    # The second request is a copy of the first (same svix id and body): queued once.
    assert queue_length(redis_client, settings.queue_name) == 1
    assert ledger_ids(redis_client) == {svix_id}


@pytest.mark.parametrize(
    "secrets",
    [(WEBHOOK_SECRET, SECOND_WEBHOOK_SECRET), (SECOND_WEBHOOK_SECRET, WEBHOOK_SECRET)],
)
def test_rotation_verdict_does_not_depend_on_secret_order(
    secrets: tuple[str, str], settings: Settings, redis_client: redis.Redis[bytes]
) -> None:
    """A matching signature followed by a malformed entry is valid for the matching key (svix
    compares entries in order); a malformed entry seen while trying the *other* key first must
    not end the search."""
    client = create_app(settings.with_overrides(webhook_secrets=secrets)).test_client()
    body = org_body()
    headers = signed_headers(SECOND_WEBHOOK_SECRET, body)
    headers["svix-signature"] += " v1,!!!notbase64"
    response = client.post(WEBHOOK_PATH, data=body, headers=headers)
    assert response.status_code == 202, response.get_json()
    assert queue_length(redis_client, settings.queue_name) == 1


# --- refused: headers and signatures ---------------------------------------------------------


@pytest.mark.parametrize("missing", ["svix-id", "svix-timestamp", "svix-signature"])
def test_missing_header(
    missing: str, post: Post, settings: Settings, redis_client: redis.Redis[bytes]
) -> None:
    body = org_body()
    headers = signed_headers(WEBHOOK_SECRET, body)
    del headers[missing]
    assert_error(post(body, headers), 400, "missing_headers")
    headers = signed_headers(WEBHOOK_SECRET, body)
    headers[missing] = ""
    assert_error(post(body, headers), 400, "missing_headers")
    assert_nothing_enqueued(redis_client, settings)


def test_no_headers_and_no_body(
    client: FlaskClient, settings: Settings, redis_client: redis.Redis[bytes]
) -> None:
    assert_error(client.post(WEBHOOK_PATH), 400, "missing_headers")
    assert_nothing_enqueued(redis_client, settings)


def test_wrong_secret(
    post_signed: Post, settings: Settings, redis_client: redis.Redis[bytes]
) -> None:
    assert_error(post_signed(org_body(), secret=WRONG_SECRET), 400, "invalid_signature")
    assert_error(post_signed(org_body(), secret=SECOND_WEBHOOK_SECRET), 400, "invalid_signature")
    assert_nothing_enqueued(redis_client, settings)


def test_tampered_body(post: Post, settings: Settings, redis_client: redis.Redis[bytes]) -> None:
    body = org_body()
    headers = signed_headers(WEBHOOK_SECRET, body)
    tampered = body.replace("Acme Test Org", "Evil Test Org")
    assert tampered != body
    assert_error(post(tampered, headers), 400, "invalid_signature")
    # Re-serialising the same JSON (what a framework's JSON parsing would do) also breaks it.
    reserialised = json.dumps(json.loads(body), indent=1)
    assert_error(post(reserialised, headers), 400, "invalid_signature")
    assert_error(post(body + " ", headers), 400, "invalid_signature")
    assert_nothing_enqueued(redis_client, settings)


def test_tampered_svix_id(post: Post, settings: Settings, redis_client: redis.Redis[bytes]) -> None:
    body = org_body()
    headers = signed_headers(WEBHOOK_SECRET, body)
    assert_error(post(body, {**headers, "svix-id": new_svix_id()}), 400, "invalid_signature")
    assert_error(
        post(body, {**headers, "svix-id": headers["svix-id"] + "x"}), 400, "invalid_signature"
    )
    assert_nothing_enqueued(redis_client, settings)


def test_tampered_timestamp(
    post: Post, settings: Settings, redis_client: redis.Redis[bytes]
) -> None:
    body = org_body()
    headers = signed_headers(WEBHOOK_SECRET, body)
    for delta in (1, -1, 60):
        changed = str(int(headers["svix-timestamp"]) + delta)
        assert_error(post(body, {**headers, "svix-timestamp": changed}), 400, "invalid_signature")
    for garbage in ("not-a-number", "nan", "inf", "1e400", "-" + headers["svix-timestamp"]):
        response = post(body, {**headers, "svix-timestamp": garbage})
        assert response.status_code == 400, (garbage, response.get_json())
        assert response.get_json()["error"] in {"invalid_signature", "stale_timestamp"}
    assert_nothing_enqueued(redis_client, settings)


@pytest.mark.parametrize(
    "offset", [timedelta(minutes=-6), timedelta(minutes=6), timedelta(days=-1)]
)
def test_stale_timestamp(
    offset: timedelta, post_signed: Post, settings: Settings, redis_client: redis.Redis[bytes]
) -> None:
    response = post_signed(org_body(), at=datetime.now(UTC) + offset)
    assert_error(response, 400, "stale_timestamp")
    assert_nothing_enqueued(redis_client, settings)


@pytest.mark.parametrize(
    ("signature", "code"),
    [
        ("v1", "invalid_signature"),
        ("v1,a,b", "invalid_signature"),
        ("v1,!!!notbase64", "invalid_signature"),
        ("v1,", "invalid_signature"),
        (",", "invalid_signature"),
        ("   ", "invalid_signature"),
        ("", "missing_headers"),
        ("v1a,{sig}", "invalid_signature"),
        ("v2,{sig}", "invalid_signature"),
        ("V1,{sig}", "invalid_signature"),
        ("{sig}", "invalid_signature"),
        ("v1,!!!notbase64 v1,{sig}", "invalid_signature"),
        ("v1 v1,{sig}", "invalid_signature"),
        ("v1,{sig}=====", "invalid_signature"),
        ("v1,{sig}\tv1,AAAA", "invalid_signature"),
    ],
)
def test_malformed_signature_header_is_400_not_500(
    signature: str,
    code: str,
    post: Post,
    settings: Settings,
    redis_client: redis.Redis[bytes],
) -> None:
    body = org_body()
    headers = signed_headers(WEBHOOK_SECRET, body)
    valid_b64 = headers["svix-signature"].split(",", 1)[1]
    # Sign for a different body so that the embedded base64 is well-formed but never matches.
    other_b64 = signed_headers(WEBHOOK_SECRET, body + " ", svix_id=headers["svix-id"])[
        "svix-signature"
    ].split(",", 1)[1]
    assert other_b64 != valid_b64
    headers["svix-signature"] = signature.format(sig=other_b64)
    assert_error(post(body, headers), 400, code)
    assert_nothing_enqueued(redis_client, settings)


def test_non_utf8_body_is_400(
    post: Post, settings: Settings, redis_client: redis.Redis[bytes]
) -> None:
    svix_id, timestamp = new_svix_id(), now_seconds()
    for body in (b'{"type":"organization.created","x":"\xff\xfe"}', b"\x80" * 64, b"\xed\xa0\x80"):
        headers = {
            "svix-id": svix_id,
            "svix-timestamp": timestamp,
            # An HMAC over the raw bytes, which is what standardwebhooks 1.3 checks.
            "svix-signature": hmac_signature(WEBHOOK_SECRET, svix_id, timestamp, body),
        }
        # Signed over the raw bytes (standardwebhooks >= 1.3 checks them as they are): a valid
        # signature over a body that is not UTF-8 text, so not a JSON payload.
        assert_error(post(body, headers), 400, "malformed_payload")
    assert_nothing_enqueued(redis_client, settings)


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("svix-id", "invalid_signature"),
        ("svix-timestamp", "invalid_signature"),
        ("svix-signature", "invalid_signature"),
    ],
)
def test_huge_header_values_are_4xx(
    name: str, code: str, post: Post, settings: Settings, redis_client: redis.Redis[bytes]
) -> None:
    body = org_body()
    headers = signed_headers(WEBHOOK_SECRET, body)
    huge = {
        "svix-id": "msg_" + "a" * 1_000_000,
        "svix-timestamp": "9" * 100_000,
        # 20,000 well-formed entries svix skips (v1a): all are looked at, none matches.
        "svix-signature": " ".join([headers["svix-signature"].replace("v1,", "v1a,")] * 20_000),
    }
    started = time.monotonic()
    response = post(body, {**headers, name: huge[name]})
    assert time.monotonic() - started < 5
    assert_error(response, 400, code)
    assert_nothing_enqueued(redis_client, settings)


def test_unrelated_huge_header_does_not_matter(
    post: Post, settings: Settings, redis_client: redis.Redis[bytes]
) -> None:
    """Capping header sizes is the HTTP server's job (gunicorn: 8190 bytes a field)."""
    body = org_body()
    headers = signed_headers(WEBHOOK_SECRET, body)
    assert post(body, {**headers, "x-padding": "p" * 1_000_000}).status_code == 202
    assert queue_length(redis_client, settings.queue_name) == 1


@pytest.mark.parametrize("length", [129, 4096])
def test_signed_svix_id_too_long_for_the_inbox_is_refused(
    length: int, post_signed: Post, settings: Settings, redis_client: redis.Redis[bytes]
) -> None:
    """``webhook_events.svix_id`` holds 128 characters: a longer id signed with the real secret
    must be refused here, not acknowledged and then fail in the worker on every attempt."""
    svix_id = "msg_" + "x" * (length - 4)
    response = post_signed(org_body(), svix_id=svix_id)
    assert_error(response, 400, "invalid_svix_id")
    assert_nothing_enqueued(redis_client, settings)


def test_svix_id_at_the_inbox_limit_is_accepted(
    post_signed: Post, settings: Settings, redis_client: redis.Redis[bytes]
) -> None:
    svix_id = "msg_" + "x" * 124
    assert post_signed(org_body(), svix_id=svix_id).status_code == 202
    assert ledger_ids(redis_client) == {svix_id}


# --- refused: correctly signed but not an event ------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        "not json",
        "",
        "   ",
        "[]",
        '[{"type": "organization.created"}]',
        "null",
        '"organization.created"',
        "42",
        "{}",
        '{"data": {"id": "org_1"}}',
        '{"type": 5}',
        '{"type": null}',
        '{"type": ["organization.created"]}',
        '{"type": {"name": "organization.created"}}',
        '{"type": ""}',
        '{"type": "organization.created"',
        '{"type": "organization.created"} trailing',
        # Bytes the worker reads as text cannot parse: a UTF-8 BOM, and UTF-16 (valid UTF-8
        # because ASCII in UTF-16-LE is ASCII plus NULs, and json.loads(bytes) sniffs UTF-16).
        '\ufeff{"type": "organization.created"}',
        '{"type": "organization.created"}'.encode("utf-16-le").decode("utf-8"),
        # (Nested too deep: tests/ingress/test_deep_bodies.py.)
    ],
    ids=lambda body: repr(body[:30]),
)
def test_signed_malformed_payload(
    body: str, post_signed: Post, settings: Settings, redis_client: redis.Redis[bytes]
) -> None:
    assert_error(post_signed(body), 400, "malformed_payload")
    assert_nothing_enqueued(redis_client, settings)


# --- body size ---------------------------------------------------------------------------------

LIMIT = 512


@pytest.fixture
def small_client(settings: Settings) -> FlaskClient:
    return create_app(settings.with_overrides(max_body_bytes=LIMIT)).test_client()


def body_of_length(length: int) -> str:
    start = '{"type":"organization.created","pad":"'
    body = start + "x" * (length - len(start) - 2) + '"}'
    assert len(body.encode()) == length
    return body


def chunked(client: FlaskClient, body: str, headers: dict[str, str]) -> tuple[int, Any]:
    """Send ``body`` as a server such as gunicorn passes a chunked request: no Content-Length,
    ``wsgi.input_terminated`` set."""
    response = client.post(
        WEBHOOK_PATH,
        input_stream=io.BytesIO(body.encode()),
        headers={**headers, "Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert response.request.content_length is None
    return response.status_code, response.get_json()


def test_body_over_the_limit_with_content_length(
    small_client: FlaskClient, settings: Settings, redis_client: redis.Redis[bytes]
) -> None:
    for length in (LIMIT + 1, LIMIT * 10, 5 * 1024 * 1024):
        body = body_of_length(length)
        response = small_client.post(
            WEBHOOK_PATH, data=body, headers=signed_headers(WEBHOOK_SECRET, body)
        )
        assert response.request.content_length == length
        assert_error(response, 413, "payload_too_large")
    assert_nothing_enqueued(redis_client, settings)


def test_body_over_the_limit_without_content_length(
    small_client: FlaskClient, settings: Settings, redis_client: redis.Redis[bytes]
) -> None:
    for length in (LIMIT + 1, LIMIT * 10, 5 * 1024 * 1024):
        body = body_of_length(length)
        status, document = chunked(small_client, body, signed_headers(WEBHOOK_SECRET, body))
        assert (status, document["error"]) == (413, "payload_too_large")
        # Without any headers as well: the size is refused first.
        status, document = chunked(small_client, body, {})
        assert (status, document["error"]) == (413, "payload_too_large")
    assert_nothing_enqueued(redis_client, settings)


def test_body_at_the_limit_is_accepted(
    small_client: FlaskClient, settings: Settings, redis_client: redis.Redis[bytes]
) -> None:
    body = body_of_length(LIMIT)
    response = small_client.post(
        WEBHOOK_PATH, data=body, headers=signed_headers(WEBHOOK_SECRET, body)
    )
    assert response.status_code == 202, response.get_json()
    status, document = chunked(small_client, body, signed_headers(WEBHOOK_SECRET, body))
    assert status == 202, document
    short = body_of_length(LIMIT - 100)
    status, document = chunked(small_client, short, signed_headers(WEBHOOK_SECRET, short))
    assert status == 202, document
    payloads = sorted(m.args[1] for m in queued_messages(redis_client, settings.queue_name))
    assert payloads == sorted([body, body, short])


# --- other routes and methods --------------------------------------------------------------------


def test_other_methods_and_paths_are_json_errors(
    client: FlaskClient, settings: Settings, redis_client: redis.Redis[bytes]
) -> None:
    assert_error(client.get(WEBHOOK_PATH), 405, "method_not_allowed")
    assert_error(client.put(WEBHOOK_PATH, data=org_body()), 405, "method_not_allowed")
    assert_error(client.post("/webhook/clerk/extra", data=org_body()), 404, "not_found")
    assert_nothing_enqueued(redis_client, settings)
