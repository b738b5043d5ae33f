"""Rebuilding the synced tables from the inbox: every applied event re-applied through the
worker's handlers and mutation rules (``workers.processing``), in the order the events were
received (any order converges), into tables that replace the live ones at once
(``models.rebuilding``): readers never see them empty or half-filled.

On PostgreSQL the events go into shadow tables page by page while live traffic goes on; then,
with the live tables' writers held (readers are not), the events applied live meanwhile are
applied to the shadow tables too, and the two sets of tables are swapped. On SQLite the whole
rebuild is one transaction. ``clerk-sync rebuild`` (``clerk_sync.cli.rebuild``) asks, prints
and shows progress; ``--dry-run`` builds the tables, reports how they differ, and keeps the
live ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import Connection, Engine, Table, func, select

from clerk_sync.core.settings import Settings
from models.changes import REBUILD, newest_change_id
from models.changes.rebuilds import add_triggers, forget_changes_after, record_differences
from models.database import transaction
from models.events import APPLIED, SKIPPED
from models.inbox import applied_events_after
from models.locks import hold_session_lock
from models.rebuilding import (
    SHADOW_SCHEMA,
    SYNCED_TABLES,
    TableChange,
    applied_since,
    carry_tombstones,
    check_previous_gone,
    clear_live_tables,
    compare,
    copy_for_comparison,
    create_shadow,
    drop_previous,
    drop_shadow,
    hold_writers,
    into_shadow,
    live_schema,
    swap,
)
from models.unit_of_work import UnitOfWork
from workers.processing import apply_payload, parse_payload, prepare
from workers.retries import retry_transient

RUN_LOCK: Final = "clerk-sync:rebuild"
CLOCK_MARGIN: Final = timedelta(minutes=5)
"""Events applied live this long before the rebuild started are applied to the new tables
again at the swap: worker and database clocks may differ (re-applying is harmless)."""


@dataclass(frozen=True)
class RebuildResult:
    reapplied: int
    """Events applied again (or skipped again: a type no handler takes)."""
    failures: list[tuple[str, str]] = field(default_factory=list)
    """(svix id, why) of each event that could not be re-applied."""
    changes: list[TableChange] = field(default_factory=list)
    """How each table differs from the one it replaced (or would replace, in a dry run)."""
    previous_kept: bool = False
    """PostgreSQL: the replaced tables were kept (``clerk_sync_previous``), because something
    outside clerk-sync (a view) depends on them."""
    caught_up: int = 0
    """PostgreSQL: events applied again at the swap (applied live since shortly before the
    rebuild started; most were in the log already)."""


Advance = Callable[[int], None]


def rebuild(
    settings: Settings,
    engine: Engine,
    batch_size: int,
    advance: Advance = lambda _events: None,
    *,
    dry_run: bool = False,
) -> RebuildResult:
    """Re-make the synced tables from the applied events (``advance`` is told how many events
    each page held); with ``dry_run``, report the differences and keep the live tables. One
    rebuild at a time (``models.locks.LockBusyError`` otherwise)."""
    with hold_session_lock(engine, RUN_LOCK):
        if engine.dialect.name == "postgresql":
            return _rebuild_beside(settings, engine, batch_size, advance, dry_run)
        return _rebuild_in_place(settings, engine, batch_size, advance, dry_run)


def _rebuild_beside(
    settings: Settings, engine: Engine, batch_size: int, advance: Advance, dry_run: bool
) -> RebuildResult:
    with transaction(engine) as connection:
        check_previous_gone(connection)
        live = live_schema(connection)
        started = connection.execute(select(func.now())).scalar_one()
        create_shadow(connection)
        carry_tombstones(connection, live)
    try:

        @retry_transient
        def page(after: tuple[datetime, str] | None) -> tuple[int, list[tuple[str, str]], Key]:
            with transaction(engine) as connection:
                into_shadow(connection, live)
                return _apply_page(connection, settings, after, batch_size)

        reapplied, failures = _apply_all(page, advance)

        def live_table(table: Table) -> str:
            return f'"{live}".{table.name}'

        def shadow_table(table: Table) -> str:
            return f"{SHADOW_SCHEMA}.{table.name}"

        if dry_run:
            with transaction(engine) as connection:
                changes = compare(connection, live_table, shadow_table)
                drop_shadow(connection)
            return RebuildResult(reapplied, failures, changes)

        @retry_transient
        def swap_in() -> tuple[int, list[tuple[str, str]], list[TableChange]]:
            with transaction(engine) as connection:
                hold_writers(connection, live)
                carry_tombstones(connection, live)
                into_shadow(connection, live)
                caught_up = applied_since(connection, started - CLOCK_MARGIN)
                failed = _apply(connection, settings, caught_up)
                changes = compare(connection, live_table, shadow_table)
                # The feed records the differences, and the new tables get its triggers.
                record_differences(connection, SYNCED_TABLES, live_table, shadow_table)
                add_triggers(connection, SHADOW_SCHEMA, SYNCED_TABLES)
                swap(connection, live)
                return len(caught_up), failed, changes

        caught_up, failed, changes = swap_in()
    except BaseException:
        with transaction(engine) as connection:
            drop_shadow(connection)
        raise
    seen = {svix_id for svix_id, _ in failures}
    failures += [failure for failure in failed if failure[0] not in seen]
    with transaction(engine) as connection:
        kept = not drop_previous(connection)
    return RebuildResult(reapplied, failures, changes, kept, caught_up)


def _rebuild_in_place(
    settings: Settings, engine: Engine, batch_size: int, advance: Advance, dry_run: bool
) -> RebuildResult:
    with engine.connect() as connection, connection.begin() as whole:
        recorded = newest_change_id(connection)
        before = copy_for_comparison(connection)
        clear_live_tables(connection)

        def page(after: tuple[datetime, str] | None) -> tuple[int, list[tuple[str, str]], Key]:
            return _apply_page(connection, settings, after, batch_size)

        reapplied, failures = _apply_all(page, advance)
        changes = compare(connection, before, lambda table: f"main.{table.name}")
        # The feed keeps the differences, not the clearing and refilling row by row.
        forget_changes_after(connection, recorded)
        record_differences(connection, SYNCED_TABLES, before, lambda table: f"main.{table.name}")
        if dry_run:
            whole.rollback()
    return RebuildResult(reapplied, failures, changes)


Key = tuple[datetime, str] | None
"""Where a page of the event log ends: (received_at, svix_id)."""


def _apply_all(
    page: Callable[[Key], tuple[int, list[tuple[str, str]], Key]], advance: Advance
) -> tuple[int, list[tuple[str, str]]]:
    reapplied = 0
    failures: list[tuple[str, str]] = []
    after: Key = None
    while True:
        found, failed, after = page(after)
        if not found:
            return reapplied, failures
        reapplied += found - len(failed)
        failures.extend(failed)
        advance(found)


def _apply_page(
    connection: Connection, settings: Settings, after: Key, batch_size: int
) -> tuple[int, list[tuple[str, str]], Key]:
    """Apply one page of the event log after ``after``; returns how many events it held, the
    failures, and where it ended."""
    found = applied_events_after(connection, after, batch_size)
    events = [(event.svix_id, event.payload or "") for event in found]
    failed = _apply(connection, settings, events)
    end = (found[-1].received_at, found[-1].svix_id) if found else after
    return len(found), failed, end


def _apply(
    connection: Connection, settings: Settings, events: Sequence[tuple[str, str]]
) -> list[tuple[str, str]]:
    """Apply events (svix id, payload) to tables nothing else writes; returns the failures."""
    documents = [parse_payload(payload) for _, payload in events]
    work = UnitOfWork(connection, alone=True, source=REBUILD)
    prepare(work, documents)
    failed: list[tuple[str, str]] = []
    for (svix_id, payload), document in zip(events, documents, strict=True):
        work.source = svix_id  # the rows keep the svix id of the event that wrote them
        outcome, error = apply_payload(
            work, payload, settings.workspace_metadata_key, document=document
        )
        if outcome not in (APPLIED, SKIPPED):
            failed.append((svix_id, error or outcome))
    return failed
