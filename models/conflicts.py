"""Bodies sent under the svix id of an earlier, different event: the first wins, and each other
body is recorded in a row of its own of ``webhook_events`` (status ``conflict``, never applied,
``conflict_of`` naming the first event), where an operator sees it (``clerk-sync events list
--status conflict``) and can tell the bodies apart by ``payload_hash``."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Final

from sqlalchemy import Connection

from models.event_ids import insert_event

log = logging.getLogger("clerk_sync.models")

CONFLICT_STATUS: Final = "conflict"
"""``models.events.EventStatus.CONFLICT``."""

MAX_SVIX_ID: Final = 128
"""``webhook_events.svix_id`` is ``String(128)``."""


def conflict_id(svix_id: str, body_hash: str) -> str:
    """The key of the row recording a conflicting body: the first event's svix id (cut to fit),
    ``~`` and the first 16 hex digits of the body's hash. The same body sent again maps to the
    same row, so however often it is replayed it is recorded once."""
    suffix = "~" + body_hash[:16]
    return svix_id[: MAX_SVIX_ID - len(suffix)] + suffix


def record_conflict(
    connection: Connection,
    *,
    svix_id: str,
    payload: str,
    body_hash: str,
    first_hash: str | None,
    event_type: str | None,
    event_timestamp: int | None,
    received_at: datetime,
    organization_id: str | None,
    user_id: str | None = None,
) -> bool:
    """Record ``payload``, a body that reused ``svix_id`` (first received with the body hashed
    ``first_hash``, if known), in a row of its own, and log it at ERROR (without the payload).
    Returns whether the row is new."""
    first = f"sha256 {first_hash}" if first_hash else "another body"
    recorded_as = conflict_id(svix_id, body_hash)
    reason = (
        f"conflict: svix id {svix_id!r} was first received with {first}; this body "
        f"(sha256 {body_hash}) was not applied"
    )
    inserted = insert_event(
        connection,
        dict(
            svix_id=recorded_as,
            event_type=event_type,
            status=CONFLICT_STATUS,
            attempts=0,
            last_error=reason,
            payload=payload,
            event_timestamp=event_timestamp,
            received_at=received_at,
            processed_at=datetime.now(UTC),
            organization_id=organization_id,
            user_id=user_id,
            payload_hash=body_hash,
            conflict_of=svix_id,
        ),
    )
    log.error(
        "svix id reused with a different body; the first is kept",
        extra={
            "svix_id": svix_id,
            "event_type": event_type,
            "first_sha256": first_hash,
            "sha256": body_hash,
            "recorded_as": recorded_as,
        },
    )
    return bool(inserted)
