"""The Flask app: verify, enqueue, answer. Knows HTTP and the queue, never the database."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from clerk_sync.settings import Settings
from ingress.queue import BrokerUnavailableError, Publisher, QueuedEvent
from ingress.verification import SignatureVerifier, Verdict

log = logging.getLogger("clerk_sync.ingress")

WEBHOOK_PATH = "/webhook/clerk"
BROKER_RETRY_AFTER_SECONDS = "30"

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

    app = Flask("clerk_sync.ingress")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes

    @app.post(WEBHOOK_PATH)
    def receive_webhook() -> Response:
        received_at_ms = int(time.time() * 1000)
        try:
            body = request.get_data(cache=False)
        except RequestEntityTooLarge:
            return _too_large(settings)
        verdict = verifier.verify(body, request.headers.items())
        svix_id = request.headers.get("svix-id") or request.headers.get("webhook-id") or ""
        if verdict is not Verdict.VALID:
            code, detail = VERDICT_ERRORS[verdict]
            log.warning("rejected webhook: %s (svix_id=%s)", code, svix_id[:64])
            return error_response(400, code, detail)

        event_type = _event_type(body)
        if event_type is None:
            log.warning("rejected webhook: malformed payload (svix_id=%s)", svix_id)
            return error_response(
                400, "malformed_payload", "the body must be a JSON object with a string 'type'"
            )
        try:
            queue.publish(QueuedEvent(svix_id, body.decode("utf-8"), received_at_ms))
        except BrokerUnavailableError as error:
            log.error("broker unavailable, event not accepted (svix_id=%s): %s", svix_id, error)
            return error_response(
                503,
                "broker_unavailable",
                "the event could not be queued; retry later",
                **{"Retry-After": BROKER_RETRY_AFTER_SECONDS},
            )
        log.info("queued %s (svix_id=%s)", event_type, svix_id)
        response = jsonify(status="queued", svix_id=svix_id)
        response.status_code = 202
        return response

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify(status="ok")

    @app.get("/readyz")
    def readyz() -> Response:
        if queue.ping():
            return jsonify(status="ready")
        return error_response(
            503, "broker_unavailable", "the broker does not answer", **{"Retry-After": "5"}
        )

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


def _too_large(settings: Settings) -> Response:
    return error_response(
        413, "payload_too_large", f"the body exceeds {settings.max_body_bytes} bytes"
    )


def _event_type(body: bytes) -> str | None:
    try:
        document: Any = json.loads(body)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    event_type = document.get("type")
    return event_type if isinstance(event_type, str) and event_type else None
