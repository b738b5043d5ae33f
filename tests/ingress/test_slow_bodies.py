"""Oversized, chunked and stalled bodies against the real ingress under gunicorn, over raw sockets:
the server answers without reading what it will refuse anyway, and a client that stops sending
does not hold a server thread for ever (issue #5)."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from clerk_sync.core.settings import Settings
from tests.conftest import queue_length
from tests.factories import body_of, event, organization_data, signed_headers
from tests.faults import IngressServer, WebhookClient
from tests.ingress.conftest import ledger_ids

pytestmark = pytest.mark.fault

LIMIT = 64 * 1024
"""``CLERK_SYNC_MAX_BODY_BYTES`` of the server under test."""
BODY_TIMEOUT = 1.5
"""``CLERK_SYNC_BODY_TIMEOUT_SECONDS`` of the server under test."""
THREADS = 2
"""Per gunicorn process; two processes."""


@pytest.fixture
def ingress(settings: Settings, tmp_path: Path) -> Iterator[IngressServer]:
    """Two gunicorn processes with two threads each: four requests in progress at most."""
    server = IngressServer(
        settings,
        tmp_path / "ingress.log",
        workers=2,
        threads=THREADS,
        env={
            "CLERK_SYNC_MAX_BODY_BYTES": str(LIMIT),
            "CLERK_SYNC_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
        },
    )
    yield server
    server.stop()


def open_request(
    server: IngressServer, headers: dict[str, str], first_bytes: bytes = b""
) -> socket.socket:
    """Send a request's head (and the start of its body) on a raw socket."""
    connection = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    head = "POST /webhook/clerk HTTP/1.1\r\nHost: 127.0.0.1\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in headers.items()
    )
    connection.sendall(head.encode() + b"\r\n" + first_bytes)
    return connection


def read_response(connection: socket.socket, timeout: float) -> tuple[int, dict[str, Any]]:
    """Status and JSON body of the response, read within ``timeout`` seconds."""
    connection.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        assert chunk, f"connection closed without a response: {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    length = next(
        int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:")
    )
    while len(body) < length:
        chunk = connection.recv(65536)
        assert chunk, "connection closed in the middle of the response"
        body += chunk
    return status, json.loads(body[:length])


def chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def signed(settings: Settings, body: bytes) -> dict[str, str]:
    return signed_headers(settings.webhook_secrets[0], body)


def assert_nothing_queued(client: redis.Redis[bytes], settings: Settings) -> None:
    assert queue_length(client, settings.queue_name) == 0
    assert ledger_ids(client) == set()


@pytest.mark.timeout(60)
def test_declared_oversized_body_is_refused_before_it_is_sent(
    ingress: IngressServer, settings: Settings, redis_client: redis.Redis[bytes]
) -> None:
    """Content-Length of 50 MB: 413 comes back after the headers and ten bytes, without the
    server waiting for the rest."""
    body = b'{"type":"or'
    headers = {**signed(settings, body), "Content-Length": str(50_000_000)}
    started = time.monotonic()
    with open_request(ingress, headers, body) as connection:
        status, document = read_response(connection, timeout=5)
        answered_in = time.monotonic() - started
    assert (status, document["error"]) == (413, "payload_too_large")
    assert answered_in < 2, answered_in
    assert_nothing_queued(redis_client, settings)


@pytest.mark.timeout(60)
def test_chunked_body_over_the_limit_is_413(
    ingress: IngressServer, settings: Settings, redis_client: redis.Redis[bytes]
) -> None:
    """A complete chunked body of twice the limit (signed, so only its size is wrong)."""
    payload = event("organization.created", organization_data(name="x" * (2 * LIMIT)))
    body = body_of(payload).encode()
    headers = {**signed(settings, body), "Transfer-Encoding": "chunked"}
    pieces = [body[start : start + 8192] for start in range(0, len(body), 8192)]
    encoded = b"".join(chunk(piece) for piece in pieces) + b"0\r\n\r\n"
    with open_request(ingress, headers) as connection:
        # The server may answer and close before it has taken it all.
        with contextlib.suppress(OSError):
            connection.sendall(encoded)
        status, document = read_response(connection, timeout=5)
    assert (status, document["error"]) == (413, "payload_too_large")
    assert_nothing_queued(redis_client, settings)


@pytest.mark.timeout(60)
def test_endless_chunked_body_is_413_once_past_the_limit(
    ingress: IngressServer, settings: Settings, redis_client: redis.Redis[bytes]
) -> None:
    """A chunked body that never ends: 413 once a little over the limit has arrived, while the
    client is still sending."""
    headers = {**signed(settings, b"{}"), "Transfer-Encoding": "chunked"}
    past_the_limit = chunk(b"{") + chunk(b" " * 4096) * (LIMIT // 4096 + 2)
    with open_request(ingress, headers, past_the_limit) as connection:
        started = time.monotonic()
        status, document = read_response(connection, timeout=5)
        answered_in = time.monotonic() - started
    assert (status, document["error"]) == (413, "payload_too_large")
    assert answered_in < 2, answered_in
    assert_nothing_queued(redis_client, settings)


@pytest.mark.timeout(90)
def test_stalled_bodies_are_cut_off_and_do_not_block_the_server(
    ingress: IngressServer, settings: Settings, redis_client: redis.Redis[bytes]
) -> None:
    """Eight clients send headers and the start of a body, then nothing (hung, or a half-open
    connection), against four server threads. Each is answered 408 once nothing has arrived for
    ``CLERK_SYNC_BODY_TIMEOUT_SECONDS``, which frees its thread, so a real delivery queued behind
    them is accepted within a few timeouts (at worst all eight sit on one process: four rounds
    of two). Without the timeout, they would hold every thread for ever."""
    body = body_of(event("organization.created", organization_data())).encode()
    headers = {**signed(settings, body), "Content-Length": str(len(body))}
    stalled = [open_request(ingress, headers, body[:20]) for _ in range(8)]
    worst_case = 8 / THREADS * BODY_TIMEOUT
    try:
        time.sleep(0.2)
        started = time.monotonic()
        client = WebhookClient(ingress.url, timeout=worst_case + 30)
        status, _ = client.post(body, signed(settings, body))
        accepted_in = time.monotonic() - started
        answers = [read_response(connection, timeout=worst_case + 5) for connection in stalled]
    finally:
        for connection in stalled:
            connection.close()
    assert status == 202
    assert accepted_in < worst_case + 3, accepted_in
    assert {(status, document["error"]) for status, document in answers} == {
        (408, "request_timeout")
    }
    assert queue_length(redis_client, settings.queue_name) == 1
