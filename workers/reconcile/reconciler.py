"""One reconciliation run: apply Clerk's complete listings, then delete what Clerk no longer has.

Every listed object (permissions, roles, organizations, users, memberships, invitations,
domains: ``phases``) goes through the same mutation rules as the webhooks, so a listed object
older than the stored row is ignored and a newer one wins; at the same version, a stored row
whose content differs is overwritten with Clerk's (``repaired``: a member's permissions or
profile gone stale, say). Then, per entity type, what is stored here but was not listed is
deleted and tombstoned, with three guards, because a tombstone is forever:

* **Written since the run started** (``synced_at`` later than the start minus a clock-skew
  margin, by a webhook: not by this reconcile, ``synced_by``): kept. Such a row may belong to
  an entity Clerk created after its listing page was read, already delivered by a webhook.
* **Still in Clerk**: every remaining candidate is looked up by itself (``checks``) and
  deleted only if Clerk answers that it is gone. Offset paging skips an object whenever an
  earlier one is deleted mid-listing; the lookup catches that, and applies what it finds.
  Invitations are never deleted (``checks``).
* **Mass deletion**: if more than half the stored entities of a type (and more than
  ``MASS_DELETION_MINIMUM``) would go, the run stops before deleting anything of that type,
  unless allowed: a wrong ``CLERK_SECRET_KEY`` (another instance) must not empty the tables.

Pages are read ahead while the previous ones are written (``prefetch``), and each page is
written in one transaction through the worker's unit of work (``pages``): its locks taken up
front in the workers' global order, so it cannot deadlock with them. ``dry_run`` rolls every
page back, so it reports what would change and changes nothing. Memory stays flat with the
instance's size: a few pages in flight, the listed ids as 8-byte hashes (``seen``), and the
stored ids compared in keyset-ordered chunks.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Engine, Table, select

from models.changes import RECONCILE
from models.locks import LockBusyError, hold_session_lock
from models.unit_of_work import UnitOfWork
from workers.reconcile.checks import check
from workers.reconcile.clerk_api import PAGE_SIZE, ClerkAPI, Page, id_of
from workers.reconcile.errors import MassDeletionError, ReconcileBusyError
from workers.reconcile.journal import Checkpoint, Journal
from workers.reconcile.pages import ENTITIES, ReadPage, read_page, write_page
from workers.reconcile.phases import PHASES, USERS
from workers.reconcile.prefetch import DEFAULT_AHEAD, Prefetcher
from workers.reconcile.report import Counts, NoProgress, Pace, Progress, ReconcileReport
from workers.retries import retry_transient

log = logging.getLogger("clerk_sync.reconcile")

CLOCK_SKEW_MARGIN: Final = timedelta(minutes=5)
"""Rows written this long before the run started count as written during it (and are kept):
``synced_at`` comes from the clocks of the worker hosts, the start from this host's."""

MASS_DELETION_FRACTION: Final = 0.5
MASS_DELETION_MINIMUM: Final = 10

RUN_LOCK: Final = "clerk-sync:reconcile"

SWEEP_CHUNK: Final = 10_000
"""Stored ids compared with the listed ones per query of the deletion phase."""

PACE_LOG_SECONDS: Final = 10.0
"""How often a listing logs its rows per second and the time left."""


class Reconciler:
    """One run; ``run`` does the work. Build it with ``reconcile``."""

    def __init__(
        self,
        engine: Engine,
        api: ClerkAPI,
        *,
        api_url: str,
        workspace_key: str,
        page_size: int,
        dry_run: bool,
        journal: Journal,
        progress: Progress,
        allow_mass_deletion: bool,
        clock_skew_margin: timedelta,
        fetch_ahead: int = DEFAULT_AHEAD,
    ) -> None:
        self.engine = engine
        self.api = api
        self.api_url = api_url
        self.workspace_key = workspace_key
        self.page_size = page_size
        self.dry_run = dry_run
        self.journal = journal
        self.progress = progress
        self.allow_mass_deletion = allow_mass_deletion
        self.clock_skew_margin = clock_skew_margin
        self.fetch_ahead = fetch_ahead
        self.listed = 0

    def run(self) -> ReconcileReport:
        started = time.monotonic()
        checkpoint = self.journal.open(
            dry_run=self.dry_run, api_url=self.api_url, now=datetime.now(UTC)
        )
        if checkpoint.resumed:
            log.info("resuming the reconcile run started %s", checkpoint.started_at.isoformat())
        for phase in PHASES:
            if phase not in checkpoint.listed:
                self._list(phase, checkpoint)
            if phase not in checkpoint.swept:
                self._sweep(phase, checkpoint)
        self.journal.finish()
        report = ReconcileReport(
            dry_run=self.dry_run,
            started_at=checkpoint.started_at,
            resumed=checkpoint.resumed,
            counts=checkpoint.counts,
            requests=self.api.requests,
            listed=self.listed,
            seconds=time.monotonic() - started,
        )
        log.info(
            "reconcile finished: %d listed in %.1f s (%.0f rows/s): %s",
            report.listed,
            report.seconds,
            report.rows_per_second,
            json.dumps(report.as_dict()["counts"]),
        )
        return report

    # -- listing -----------------------------------------------------------------------------

    def apply(self, phase: str, items: list[Mapping[str, Any]]) -> Counts:
        """Apply some of Clerk's objects (a deletion candidate's lookup) in one transaction."""
        entity = ENTITIES[phase]
        read = read_page(entity, Page(items, None), self.workspace_key)
        return write_page(self.engine, entity, read, dry_run=self.dry_run)

    def _list(self, phase: str, checkpoint: Checkpoint) -> None:
        entity = ENTITIES[phase]
        offset = checkpoint.offsets[phase]
        counted = self.api.count_users() if phase == USERS else None

        def fetch(at: int) -> ReadPage:
            page = self.api.list_page(phase, at, self.page_size)
            return read_page(entity, page, self.workspace_key)

        def expected(first: ReadPage) -> int | None:
            return first.page.total if counted is None else counted

        prefetcher = Prefetcher(
            fetch,
            offset=offset,
            page_size=self.page_size,
            size=lambda read: read.size,
            expected=expected,
            ahead=self.fetch_ahead,
        )
        pace: Pace | None = None
        logged = time.monotonic()
        try:
            for read in prefetcher.pages():
                page = read.page
                if pace is None:
                    pace = Pace(expected(read), offset)
                    self.progress.begin(phase, pace.total, offset)
                counts = write_page(self.engine, entity, read, dry_run=self.dry_run)
                offset += len(page.items)
                self._record(
                    checkpoint,
                    {
                        "record": "page",
                        "phase": phase,
                        "offset": offset,
                        "ids": [id_of(item) for item in page.items],
                        "counts": _nonzero(counts),
                    },
                )
                pace.advance(len(page.items))
                self.listed += len(page.items)
                self.progress.advance(len(page.items))
                if time.monotonic() - logged >= PACE_LOG_SECONDS:
                    logged = time.monotonic()
                    log.info("%s: %s", phase, pace.describe())
        finally:
            if pace is not None:
                self.progress.end()
        if pace is not None:
            log.info(
                "%s: %d listed in %.1f s (%.0f rows/s)", phase, pace.rows, pace.seconds, pace.rate
            )
        self._record(checkpoint, {"record": "listed", "phase": phase})

    # -- deleting what Clerk no longer has ---------------------------------------------------

    def _sweep(self, phase: str, checkpoint: Checkpoint) -> None:
        table = ENTITIES[phase].kind.table
        cutoff = checkpoint.started_at - self.clock_skew_margin
        stored, missing = self._missing(table, checkpoint, phase)
        recent = sorted(entity_id for entity_id, synced_at in missing if synced_at >= cutoff)
        candidates = sorted(
            entity_id
            for entity_id, synced_at in missing
            if synced_at < cutoff and entity_id not in checkpoint.checked[phase]
        )
        if (
            not self.allow_mass_deletion
            and len(candidates) > MASS_DELETION_MINIMUM
            and len(candidates) > MASS_DELETION_FRACTION * stored
        ):
            raise MassDeletionError(
                f"{len(candidates)} of {stored} stored {phase} are missing from Clerk's "
                "listing: is CLERK_SECRET_KEY the key of this database's Clerk instance? "
                "Nothing of them was deleted; allow it with --allow-mass-deletion"
            )
        self.progress.begin(f"{phase} (checking missing)", len(candidates), 0)
        try:
            for entity_id in candidates:
                counts = check(self, phase, entity_id)
                self._record(
                    checkpoint,
                    {
                        "record": "checked",
                        "phase": phase,
                        "id": entity_id,
                        "counts": _nonzero(counts),
                    },
                )
                self.progress.advance(1)
        finally:
            self.progress.end()
        kept = Counts(kept=len(recent))
        if recent:
            log.info(
                "%s: kept %d missing from the listing but written since the run started",
                phase,
                len(recent),
            )
        self._record(checkpoint, {"record": "swept", "phase": phase, "counts": _nonzero(kept)})

    def _missing(
        self, table: Table, checkpoint: Checkpoint, phase: str
    ) -> tuple[int, list[tuple[str, datetime]]]:
        """How many rows are stored, and the id and last write of those not listed: the
        stored ids are read in chunks, in id order (keyset), never all at once. A row this
        reconcile wrote (``synced_by``: a member's profile recomputed from its user, say) is
        dated never: it was not written by a webhook since the run started."""
        seen = checkpoint.seen[phase]
        stored = 0
        missing: list[tuple[str, datetime]] = []
        after = ""
        never = datetime.min.replace(tzinfo=UTC)
        with self.engine.connect() as connection:
            while True:
                chunk = connection.execute(
                    select(table.c.id, table.c.synced_at, table.c.synced_by)
                    .where(table.c.id > after)
                    .order_by(table.c.id)
                    .limit(SWEEP_CHUNK)
                ).all()
                stored += len(chunk)
                missing += [
                    (r.id, never if r.synced_by == RECONCILE else _as_utc(r.synced_at))
                    for r in chunk
                    if r.id not in seen
                ]
                if len(chunk) < SWEEP_CHUNK:
                    return stored, missing
                after = chunk[-1].id

    def delete(self, mutation: Callable[[UnitOfWork], None]) -> None:
        """One deletion in a transaction of its own (rolled back in a dry run)."""

        @retry_transient
        def attempt() -> None:
            with self.engine.connect() as connection:
                transaction = connection.begin()
                try:
                    mutation(UnitOfWork(connection, source=RECONCILE))
                except BaseException:
                    transaction.rollback()
                    raise
                if self.dry_run:
                    transaction.rollback()
                else:
                    transaction.commit()

        attempt()

    def _record(self, checkpoint: Checkpoint, record: dict[str, Any]) -> None:
        self.journal.append(record)
        checkpoint.apply(record)


def _nonzero(counts: Counts) -> dict[str, int]:
    return {outcome: count for outcome, count in counts.as_dict().items() if count}


def _as_utc(moment: datetime) -> datetime:
    """SQLite returns the stored UTC wall time without a zone."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def reconcile(
    engine: Engine,
    api: ClerkAPI,
    *,
    api_url: str,
    workspace_key: str,
    page_size: int = PAGE_SIZE,
    dry_run: bool = False,
    state_file: Path | None = None,
    progress: Progress | None = None,
    allow_mass_deletion: bool = False,
    clock_skew_margin: timedelta = CLOCK_SKEW_MARGIN,
    fetch_ahead: int = DEFAULT_AHEAD,
) -> ReconcileReport:
    """Run (or resume, from ``state_file``) one reconciliation; see the module's docstring.

    Raises ``ReconcileBusyError`` if another run holds the lock (PostgreSQL), and another
    ``ReconcileError`` if it cannot finish; the journal then holds what it did.
    """
    if not 1 <= page_size <= PAGE_SIZE:
        raise ValueError(f"page_size must be between 1 and {PAGE_SIZE}")
    reconciler = Reconciler(
        engine,
        api,
        api_url=api_url,
        workspace_key=workspace_key,
        page_size=page_size,
        dry_run=dry_run,
        journal=Journal(state_file),
        progress=progress or NoProgress(),
        allow_mass_deletion=allow_mass_deletion,
        clock_skew_margin=clock_skew_margin,
        fetch_ahead=fetch_ahead,
    )
    try:
        with hold_session_lock(engine, RUN_LOCK):
            return reconciler.run()
    except LockBusyError as busy:
        raise ReconcileBusyError("another reconcile run is in progress") from busy
