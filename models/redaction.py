"""Stored payloads about one user, read and rewritten: how a deleted user's personal data leaves
``webhook_events`` (``workers.erasure`` decides what each payload keeps)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, bindparam, func, select, update

from models.tables import webhook_events


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
    .where(webhook_events.c.svix_id == bindparam("p_svix_id"))
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
