"""Rebuilding the synced tables from the inbox: empty organizations, memberships and their
tombstones, then re-apply every applied event through the worker's handlers and mutation rules
(``workers.processing``), in the order the events were received (any order converges).

``clerk-sync rebuild`` (``clerk_sync.cli.rebuild``) asks, prints and shows progress; the work is
here, beside the code that applies live deliveries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Engine

from clerk_sync.core.settings import Settings
from models.database import transaction
from models.events import APPLIED, SKIPPED
from models.inbox import StoredEvent, applied_events_after, empty_synced_tables
from models.unit_of_work import UnitOfWork
from workers.processing import apply_payload, parse_payload, prepare
from workers.retries import retry_transient


@dataclass(frozen=True)
class RebuildResult:
    reapplied: int
    """Events applied again (or skipped again: a type no handler takes)."""
    failures: list[tuple[str, str]] = field(default_factory=list)
    """(svix id, why) of each event that could not be re-applied."""


def rebuild(
    settings: Settings,
    engine: Engine,
    batch_size: int,
    advance: Callable[[int], None] = lambda _events: None,
) -> RebuildResult:
    """Empty the synced tables, then re-apply the applied events page by page (a transaction
    per page, retried on transient errors); ``advance`` is told how many each page held.

    Dead letters and events still in flight are not part of it. Readers see the tables fill up
    again while it runs; live traffic may continue (a page takes its locks in the workers'
    order, so it waits for them rather than deadlocking with them)."""

    @retry_transient
    def page(after: tuple[datetime, str] | None) -> tuple[list[StoredEvent], list[tuple[str, str]]]:
        failed: list[tuple[str, str]] = []
        with transaction(engine) as connection:
            found = applied_events_after(connection, after, batch_size)
            documents = [parse_payload(event.payload or "") for event in found]
            # The page's locks up front, in the workers' global order: a page applied while
            # workers apply batches waits for them instead of deadlocking with them.
            work = UnitOfWork(connection)
            prepare(work, documents)
            for event, document in zip(found, documents, strict=True):
                assert event.payload is not None
                outcome, error = apply_payload(
                    work, event.payload, settings.workspace_metadata_key, document=document
                )
                if outcome not in (APPLIED, SKIPPED):
                    failed.append((event.svix_id, error or outcome))
        return found, failed

    @retry_transient
    def empty() -> None:
        with transaction(engine) as connection:
            empty_synced_tables(connection)

    empty()
    reapplied = 0
    failures: list[tuple[str, str]] = []
    after: tuple[datetime, str] | None = None
    while True:
        found, failed = page(after)
        if not found:
            break
        reapplied += len(found) - len(failed)
        failures.extend(failed)
        advance(len(found))
        after = (found[-1].received_at, found[-1].svix_id)
    return RebuildResult(reapplied, failures)
