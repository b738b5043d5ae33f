"""Stored payloads about one user, read and rewritten: how a deleted user's personal data leaves
``webhook_events`` (``workers.erasure`` decides what each payload keeps)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import Connection, bindparam, delete, func, select, update

from models.event_ids import event_with_id
from models.statements import insert_for
from models.tables import erasure_requests, webhook_events


def payloads_about(
    connection: Connection, user_ids: Sequence[str]
) -> list[tuple[str, str | None, str]]:
    """(svix id, event type, payload) of every stored event about these users. Not locked:
    nothing else rewrites a stored payload, and erasing is idempotent."""
    rows = connection.execute(
        select(webhook_events.c.svix_id, webhook_events.c.event_type, webhook_events.c.payload)
        .where(webhook_events.c.user_id.in_(list(user_ids)))
        .order_by(webhook_events.c.svix_id)
    )
    return [(row.svix_id, row.event_type, row.payload) for row in rows]


_REWRITE = (
    update(webhook_events)
    .where(event_with_id(bindparam("p_svix_id", type_=webhook_events.c.svix_id.type)))
    .values(payload=bindparam("p_payload"))
)


def rewrite_payloads(connection: Connection, payloads: Sequence[tuple[str, str]]) -> None:
    """Store these (svix id, payload) in place of the ones recorded. ``payload_hash`` keeps the
    hash of the body Svix sent, so a redelivery of it is still known for a copy."""
    if payloads:
        connection.execute(
            _REWRITE,
            [{"p_svix_id": svix_id, "p_payload": payload} for svix_id, payload in payloads],
        )


def count_about(connection: Connection, user_id: str) -> int:
    """How many stored events are about ``user_id``."""
    return int(
        connection.execute(
            select(func.count())
            .select_from(webhook_events)
            .where(webhook_events.c.user_id == user_id)
        ).scalar_one()
    )


def request_erasure(connection: Connection, user_ids: Sequence[str]) -> None:
    """Note that these deleted users' stored events are to be erased (once each)."""
    if not user_ids:
        return
    now = datetime.now(UTC)
    statement = insert_for(connection, erasure_requests).on_conflict_do_nothing(
        index_elements=[erasure_requests.c.user_id]
    )
    connection.execute(
        statement, [{"user_id": user_id, "requested_at": now} for user_id in user_ids]
    )


def take_erasure_requests(connection: Connection, limit: int) -> list[str]:
    """Up to ``limit`` requested users, oldest first, locked for this transaction (skipping
    those another transaction holds) and deleted with it: the caller erases them before it
    commits."""
    users = list(
        connection.execute(
            select(erasure_requests.c.user_id)
            .order_by(erasure_requests.c.requested_at, erasure_requests.c.user_id)
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).scalars()
    )
    if users:
        connection.execute(delete(erasure_requests).where(erasure_requests.c.user_id.in_(users)))
    return users
