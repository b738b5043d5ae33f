"""Applying one queued event: the code path every delivery, retry and test goes through."""

from __future__ import annotations

import json
import logging
import traceback
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from tenacity import retry, retry_if_exception, stop_after_attempt, wait_random_exponential

from models.database import is_transient, transaction
from models.events import (
    APPLIED,
    DEAD,
    FINISHED,
    SKIPPED,
    IncomingEvent,
    claim_event,
    finish_event,
    note_failed_attempt,
)
from workers.handlers import HANDLERS
from workers.handlers.payloads import PoisonEventError, read_envelope, to_milliseconds

log = logging.getLogger("clerk_sync.worker")

IN_PROCESS_ATTEMPTS = 3
"""Short blips (a dropped connection, a deadlock victim) are retried here before Celery's slower,
backed-off retries take over."""


def describe_event(svix_id: str, payload: str, received_at_ms: int) -> IncomingEvent:
    """What the inbox records about an event, read as far as the payload allows."""
    event_type: str | None = None
    event_timestamp: int | None = None
    try:
        document: Any = json.loads(payload)
    except ValueError:
        document = None
    if isinstance(document, dict):
        raw_type = document.get("type")
        event_type = raw_type[:128] if isinstance(raw_type, str) else None
        event_timestamp = _storable_timestamp(document.get("timestamp"))
    return IncomingEvent(
        svix_id=svix_id,
        payload=payload,
        received_at=datetime.fromtimestamp(received_at_ms / 1000, UTC),
        event_type=event_type,
        event_timestamp=event_timestamp,
    )


BIGINT_RANGE = range(-(2**63), 2**63)
"""What ``webhook_events.event_timestamp`` (BIGINT) can hold."""


def _storable_timestamp(raw: Any) -> int | None:
    """The envelope time in milliseconds, or None when it is not an integer or would not fit the
    column. Like the cut-down ``event_type``, this keeps the inbox row writable whatever the
    payload says: an out-of-range timestamp used to make ``claim_event`` itself fail, so the
    event was never recorded (nor dead-lettered) and the task failed with a non-transient error.
    """
    if not isinstance(raw, int) or isinstance(raw, bool):
        return None
    milliseconds = to_milliseconds(raw)
    return milliseconds if milliseconds in BIGINT_RANGE else None


def apply_event(engine: Engine, event: IncomingEvent, workspace_key: str) -> str:
    """Record and apply one event in one transaction; returns its status afterwards.

    The mutation runs inside a savepoint, so an event that cannot be applied rolls back alone
    and is committed as ``dead`` together with its error. An event already applied or skipped is
    left as it is. Transient database errors propagate for the caller to retry.
    """
    with transaction(engine) as connection:
        status = claim_event(connection, event)
        if status in FINISHED:
            log.info("duplicate %s ignored (svix_id=%s)", event.event_type, event.svix_id)
            return status
        outcome, error = APPLIED, None
        try:
            with connection.begin_nested():
                envelope = read_envelope(json.loads(event.payload))
                handler = HANDLERS.get(envelope.type)
                if handler is None:
                    outcome, error = SKIPPED, f"no handler for event type {envelope.type!r}"
                else:
                    handler(connection, envelope, workspace_key)
        except (PoisonEventError, ValueError) as poison:
            outcome, error = DEAD, f"{type(poison).__name__}: {poison}"
        except Exception as failure:
            if is_transient(failure):
                raise
            outcome, error = DEAD, traceback.format_exc()
        finish_event(connection, event.svix_id, outcome, attempts=1, error=error)
    log.info("%s %s (svix_id=%s)", outcome, event.event_type, event.svix_id)
    return outcome


apply_with_short_retries = retry(
    retry=retry_if_exception(is_transient),
    stop=stop_after_attempt(IN_PROCESS_ATTEMPTS),
    wait=wait_random_exponential(multiplier=0.05, max=1.0),
    reraise=True,
)(apply_event)


def record_retry(engine: Engine, event: IncomingEvent, error: BaseException) -> None:
    """Best effort: show the failing event in the inbox while it waits for its next attempt.
    When the database itself is down this fails too, and the event is still safe in the queue."""
    try:
        with transaction(engine) as connection:
            note_failed_attempt(
                connection, event, attempts=IN_PROCESS_ATTEMPTS, error=_describe(error)
            )
    except Exception as failure:
        if not is_transient(failure):
            raise
        log.warning("could not record failed attempt (svix_id=%s)", event.svix_id)


def dead_letter(engine: Engine, event: IncomingEvent, error: BaseException) -> None:
    """Give up on an event whose retries are exhausted: keep it, with why, for an operator."""
    with transaction(engine) as connection:
        if claim_event(connection, event) in FINISHED:
            return
        finish_event(
            connection,
            event.svix_id,
            DEAD,
            attempts=IN_PROCESS_ATTEMPTS,
            error="".join(traceback.format_exception(error)),
        )
    log.error(
        "dead-lettered %s (svix_id=%s): %s", event.event_type, event.svix_id, _describe(error)
    )


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
