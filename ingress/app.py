"""The Flask app: verify, enqueue, answer. Knows HTTP and the queue, never the database."""

from __future__ import annotations

import logging
import socket
import time
import weakref
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import ClientDisconnected, HTTPException, RequestEntityTooLarge

from clerk_sync.broker.publisher import Publisher
from clerk_sync.core.durability import DurabilityMonitor
from clerk_sync.core.json_reading import PayloadTooDeepError, read_payload
from clerk_sync.core.ledger_scripts import Acceptance
from clerk_sync.core.queue import BrokerUnavailableError, QueuedEvent
from clerk_sync.core.settings import Settings
from ingress.metrics import IngressMetrics
from ingress.sockets import kernel_timeout
from ingress.verification import SIGNING_HEADERS, SignatureVerifier, Verdict

log = logging.getLogger("clerk_sync.ingress")

WEBHOOK_PATH = "/webhook/clerk"
BROKER_RETRY_AFTER_SECONDS = "30"
MAX_SVIX_ID_LENGTH = 128
"""``webhook_events.svix_id`` is ``String(128)``: a longer id (even correctly signed) could never
be recorded by the worker, so it is refused here instead of acknowledged and then lost."""

QUEUED_EVENT_TYPE = "clerk_sync.queued_event_type"
"""Where a request keeps the type of the event it queued, for counting once answered."""
METRICS_FAILURE_LOG_SECONDS = 60.0

SIGNING_HEADER_KEYS = {name: "HTTP_" + name.upper().replace("-", "_") for name in SIGNING_HEADERS}
"""Where WSGI keeps each signing header (the server joins repeated headers with commas)."""


VERDICT_OUTCOMES = {
    Verdict.MISSING_HEADERS: "missing_headers",
    Verdict.STALE_TIMESTAMP: "stale",
    Verdict.BAD_SIGNATURE: "bad_signature",
}

VERDICT_ERRORS = {
    Verdict.MISSING_HEADERS: (
        "missing_headers",
        "svix-id, svix-timestamp and svix-signature headers are required",
    ),
    Verdict.STALE_TIMESTAMP: (
        "stale_timestamp",
        "svix-timestamp is outside the 5-minute tolerance",
    ),
    Verdict.BAD_SIGNATURE: ("invalid_signature", "the signature does not match the body"),
}


def error_response(status: int, code: str, detail: str, **headers: str) -> Response:
    response = jsonify(error=code, detail=detail)
    response.status_code = status
    response.headers.update(headers)
    return response


def create_app(settings: Settings, publisher: Publisher | None = None) -> Flask:
    """Build the ingress. ``publisher`` defaults to one publishing to ``settings.broker_url``;
    nothing connects until the first request."""
    settings.require_webhook_secrets()
    verifier = SignatureVerifier(settings.webhook_secrets)
    queue = publisher if publisher is not None else Publisher(settings)
    metrics = IngressMetrics()
    durability = DurabilityMonitor(settings)
    body_wait = kernel_timeout(settings.body_timeout_seconds)
    connections_with_body_wait: weakref.WeakSet[socket.socket] = weakref.WeakSet()

    app = Flask("clerk_sync.ingress")
    # The counts are served by the gunicorn master on a port of their own (``ingress.metrics``);
    # kept here for whoever holds the app (tests, ``clerk-sync dev``).
    app.extensions["clerk_sync.metrics"] = metrics
    # One byte over the limit, and the length checked below: for a body without Content-Length
    # (chunked, with ``wsgi.input_terminated`` as gunicorn sets it) werkzeug stops reading at
    # MAX_CONTENT_LENGTH and returns the truncated body without raising, so an oversized body
    # would be verified (and refused as a bad signature) instead of answered with 413.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes + 1

    metrics_failed_at = [-METRICS_FAILURE_LOG_SECONDS]

    @app.post(WEBHOOK_PATH)
    def receive_webhook() -> Response:
        started = time.perf_counter()
        response, outcome = handle_webhook()
        # The answer is decided (and for an accepted event, Redis holds it): counting it may
        # fail (say, PROMETHEUS_MULTIPROC_DIR deleted under a forked worker), never change it.
        try:
            metrics.requests_by_outcome[outcome].inc()
            event_type = request.environ.get(QUEUED_EVENT_TYPE)
            if event_type is not None:
                metrics.events.labels(event_type[:64]).inc()
            metrics.latency.observe(time.perf_counter() - started)
        except Exception as error:  # noqa: BLE001 - logged; the answer stands
            if started - metrics_failed_at[0] >= METRICS_FAILURE_LOG_SECONDS:
                metrics_failed_at[0] = started
                log.error(
                    "metrics not counted (logged at most once a minute)",
                    extra={"outcome": outcome, "error": f"{type(error).__name__}: {error}"},
                )
        return response

    def handle_webhook() -> tuple[Response, str]:
        received_at_ms = int(time.time() * 1000)
        _limit_body_wait(body_wait, connections_with_body_wait)
        try:
            body = request.get_data(cache=False)
        except RequestEntityTooLarge:
            return _too_large(settings), "too_large"
        except ClientDisconnected:
            log.warning("webhook rejected", extra={"reason": "request_timeout"})
            return error_response(
                408, "request_timeout", "the request body stopped arriving"
            ), "body_timeout"
        if len(body) > settings.max_body_bytes:
            return _too_large(settings), "too_large"
        header = _signing_header_reader(request.environ)
        verdict = verifier.verify(body, header)
        svix_id = header("svix-id") or header("webhook-id") or ""
        if verdict is not Verdict.VALID:
            code, detail = VERDICT_ERRORS[verdict]
            log.warning("webhook rejected", extra={"reason": code, "svix_id": svix_id[:64]})
            return error_response(400, code, detail), VERDICT_OUTCOMES[verdict]
        if len(svix_id) > MAX_SVIX_ID_LENGTH:
            log.warning("webhook rejected", extra={"reason": "invalid_svix_id"})
            return error_response(
                400, "invalid_svix_id", f"svix-id is longer than {MAX_SVIX_ID_LENGTH} characters"
            ), "malformed"

        # Whether svix decodes the body before checking the signature depends on its version
        # (standardwebhooks 1.3 checks the raw bytes): a signed body need not be UTF-8.
        try:
            payload = body.decode("utf-8")
        except UnicodeDecodeError:
            payload = ""
        try:
            event_type = _event_type(payload) if payload else None
        except PayloadTooDeepError as error:
            log.warning(
                "webhook rejected", extra={"reason": "payload_too_deep", "svix_id": svix_id}
            )
            return error_response(400, "payload_too_deep", str(error)), "malformed"
        if event_type is None:
            log.warning(
                "webhook rejected", extra={"reason": "malformed_payload", "svix_id": svix_id}
            )
            return error_response(
                400, "malformed_payload", "the body must be a JSON object with a string 'type'"
            ), "malformed"
        try:
            acceptance = queue.publish(QueuedEvent(svix_id, payload, received_at_ms, event_type))
        except BrokerUnavailableError as error:
            log.error(
                "broker unavailable, event not accepted",
                extra={"svix_id": svix_id, "event_type": event_type, "error": str(error)},
            )
            return error_response(
                503,
                "broker_unavailable",
                "the event could not be queued; retry later",
                **{"Retry-After": BROKER_RETRY_AFTER_SECONDS},
            ), "broker_down"
        if acceptance is not Acceptance.ACCEPTED:
            return _not_queued_again(acceptance, svix_id, event_type)
        request.environ[QUEUED_EVENT_TYPE] = event_type
        # DEBUG, not INFO: one line per accepted event costs as much CPU as the whole enqueue,
        # and the inbox (``clerk-sync events show``) and the worker's line record each event.
        log.debug("event queued", extra={"svix_id": svix_id, "event_type": event_type})
        # No body: gunicorn writes a response's body with a system call of its own after the
        # headers, and Svix needs only the status. The svix id is the request's own.
        return Response(status=202), "accepted"

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok")

    @app.get("/readyz")
    def readyz() -> Response:
        if not queue.ping():
            return error_response(
                503, "broker_unavailable", "the broker does not answer", **{"Retry-After": "5"}
            )
        return _readiness(durability, settings.require_durable_broker)

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(_error: RequestEntityTooLarge) -> Response:
        return _too_large(settings)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        return error_response(
            error.code or 500,
            (error.name or "error").lower().replace(" ", "_"),
            error.description or "",
        )

    return app


def _limit_body_wait(timeval: bytes, limited: weakref.WeakSet[socket.socket]) -> None:
    """Under gunicorn, bound every wait for more of the body. A client that stops sending
    (hung, or a half-open connection) would otherwise hold a server thread for ever; the blocked
    ``recv`` fails, werkzeug turns that into ``ClientDisconnected``, and gunicorn closes the
    connection.

    A kernel timeout (``SO_RCVTIMEO``), set once per connection, rather than
    ``socket.settimeout`` on every request: a Python-level timeout makes the socket
    non-blocking and adds a ``poll`` before every read and write. The answer needs no send
    timeout: a few hundred bytes always fit the socket's send buffer."""
    connection = request.environ.get("gunicorn.socket")
    if connection is not None and connection not in limited:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        limited.add(connection)


def _signing_header_reader(environ: dict[str, Any]) -> Callable[[str], str | None]:
    """Read signing headers straight from the WSGI environ: werkzeug's case-insensitive
    ``request.headers`` rebuilds the environ key on every lookup, eight of them a request."""

    def header(name: str) -> str | None:
        value: str | None = environ.get(SIGNING_HEADER_KEYS[name])
        return value

    return header


def _readiness(durability: DurabilityMonitor, require_durable: bool) -> Response:
    """``/readyz`` once the broker answers: whether it is durable (and why not), and ``503``
    when durability is required and not known (``clerk_sync.core.durability``)."""
    checked = durability.current()
    body = {"durable": checked.durable, "durability": checked.as_dict()}
    if require_durable and checked.durable is not True:
        response = jsonify(
            error="broker_not_durable",
            detail="CLERK_SYNC_REQUIRE_DURABLE_BROKER is set and the broker is not known to be "
            "durable",
            **body,
        )
        response.status_code = 503
        return response
    return jsonify(status="ready", **body)


def _not_queued_again(
    acceptance: Acceptance, svix_id: str, event_type: str
) -> tuple[Response, str]:
    """``202`` for an svix id the broker holds (or finished recently): Svix must not retry it.
    A copy (a Svix retry, a captured request replayed) is ignored; another body under the same
    svix id is logged here, and recorded in the inbox by the sweeper (never applied)."""
    if acceptance is Acceptance.CONFLICT:
        log.error(
            "svix id reused with a different body; the first is kept, this one set aside",
            extra={"svix_id": svix_id, "event_type": event_type},
        )
        return Response(status=202), "conflict"
    log.debug("copy of a queued event ignored", extra={"svix_id": svix_id})
    return Response(status=202), "duplicate"


def _too_large(settings: Settings) -> Response:
    return error_response(
        413, "payload_too_large", f"the body exceeds {settings.max_body_bytes} bytes"
    )


def _event_type(payload: str) -> str | None:
    """The event's ``type``, or None if the worker could not read the payload.

    Read with the worker's own reader (``read_payload``: exactly ``json.loads``'s reading, with
    one depth limit), so the ingress accepts exactly the payloads a worker can read; one nested
    too deep raises ``PayloadTooDeepError``. Parsing the decoded text matters:
    ``json.loads(bytes)`` would also accept a UTF-8 BOM or UTF-16 that the worker's
    ``json.loads(str)`` rejects.
    """
    try:
        document: Any = read_payload(payload)
    except PayloadTooDeepError:
        raise
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    event_type = document.get("type")
    return event_type if isinstance(event_type, str) and event_type else None
