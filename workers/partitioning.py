"""Beat's job keeping the inbox's monthly partitions ahead of time (PostgreSQL; nothing to do
on SQLite): the current month's and the next ``MONTHS_AHEAD`` months' partitions exist before
an event needs them. Idempotent and safe with two beats (``models.partitions`` takes an
advisory lock); the default partition catches a row if it ever runs too late."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any, Final

from sqlalchemy import Engine

from models.database import transaction
from models.partitions import ensure_partitions

log = logging.getLogger("clerk_sync.worker")

PARTITIONS_TASK: Final = "clerk_sync.create_partitions"
PARTITIONS_INTERVAL: Final = timedelta(hours=6)


def partitions_schedule() -> dict[str, Any]:
    return {"partitions-ahead": {"task": PARTITIONS_TASK, "schedule": PARTITIONS_INTERVAL}}


def create_partitions_ahead(engine: Engine, now: datetime | None = None) -> list[str]:
    """Create the missing partitions; returns their names."""
    with transaction(engine) as connection:
        created = ensure_partitions(connection, now or datetime.now(UTC))
    if created:
        log.info("inbox partitions created", extra={"partitions": created})
    return created
