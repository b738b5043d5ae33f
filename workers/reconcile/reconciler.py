"""One reconciliation run: apply Clerk's complete listings, then delete what Clerk no longer has.

Every listed object goes through the same mutation functions as the webhooks
(``upsert_organization``, ``upsert_membership``, ``upsert_user``), so a listed object older than
the stored row is ignored and a newer one wins. Then, per entity type, what is stored here but
was not listed is deleted and tombstoned, with three guards, because a tombstone is forever:

* **Written since the run started** (``synced_at`` later than the start minus a clock-skew
  margin): kept. Such a row may belong to an entity Clerk created after its listing page was
  read, already delivered by a webhook.
* **Still in Clerk**: every remaining candidate is looked up directly (``GET /v1/users/{id}``,
  ``GET /v1/organizations/{id}``, ``GET /v1/organizations/{id}/memberships?user_id=…``) and
  deleted only if Clerk answers that it is gone. Offset paging skips an object whenever an
  earlier one is deleted mid-listing; the lookup catches that, and applies what it finds.
* **Mass deletion**: if more than half the stored entities of a type (and more than
  ``MASS_DELETION_MINIMUM``) would go, the run stops before deleting anything of that type,
  unless allowed: a wrong ``CLERK_SECRET_KEY`` (another instance) must not empty the tables.

Each object is applied in a transaction of its own (a page-long transaction would hold many
organization and user locks at once and deadlock against the workers); ``dry_run`` rolls every
one back, so it reports what would change and changes nothing.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Connection, Engine, Table, select

from models.locks import LockBusyError, hold_session_lock
from models.memberships import remove_membership, upsert_membership
from models.organizations import delete_organization, upsert_organization
from models.tables import organization_memberships, organizations, users
from models.unit_of_work import UnitOfWork
from models.users import delete_user, upsert_user
from workers.handlers.memberships import membership_snapshot
from workers.handlers.payloads import PoisonEventError, organization_snapshot
from workers.handlers.users import user_snapshot
from workers.reconcile.clerk_api import PAGE_SIZE, ClerkAPI, id_of
from workers.reconcile.errors import MassDeletionError, ReconcileBusyError
from workers.reconcile.journal import Checkpoint, Journal
from workers.reconcile.phases import MEMBERSHIPS, ORGANIZATIONS, PHASES, USERS
from workers.reconcile.report import Counts, NoProgress, Progress, ReconcileReport
from workers.retries import retry_transient

log = logging.getLogger("clerk_sync.reconcile")

CLOCK_SKEW_MARGIN: Final = timedelta(minutes=5)
"""Rows written this long before the run started count as written during it (and are kept):
``synced_at`` comes from the clocks of the worker hosts, the start from this host's."""

MASS_DELETION_FRACTION: Final = 0.5
MASS_DELETION_MINIMUM: Final = 10

RUN_LOCK: Final = "clerk-sync:reconcile"


TABLES: Final[dict[str, Table]] = {
    ORGANIZATIONS: organizations,
    MEMBERSHIPS: organization_memberships,
    USERS: users,
}


def _exists(connection: Connection, table: Table, entity_id: str) -> bool:
    return connection.execute(select(table.c.id).where(table.c.id == entity_id)).first() is not None


def _upsert(work: UnitOfWork, phase: str, item: Mapping[str, Any], workspace_key: str) -> bool:
    if phase == ORGANIZATIONS:
        return upsert_organization(work, organization_snapshot(item, workspace_key))
    if phase == MEMBERSHIPS:
        return upsert_membership(work, membership_snapshot(item, workspace_key))
    return upsert_user(work, user_snapshot(item))


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

    def run(self) -> ReconcileReport:
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
        )
        log.info("reconcile finished: %s", json.dumps(report.as_dict()["counts"]))
        return report

    # -- one unit of work --------------------------------------------------------------------

    @contextmanager
    def _unit(self) -> Iterator[Connection]:
        """One transaction, committed, or rolled back in a dry run."""
        with self.engine.connect() as connection:
            transaction = connection.begin()
            try:
                yield connection
            except BaseException:
                transaction.rollback()
                raise
            if self.dry_run:
                transaction.rollback()
            else:
                transaction.commit()

    def _apply(self, phase: str, item: Mapping[str, Any]) -> str:
        """Apply one of Clerk's objects; returns the outcome."""

        @retry_transient
        def attempt() -> str:
            entity_id = id_of(item)
            table = TABLES[phase]
            with self._unit() as connection:
                existed = _exists(connection, table, entity_id)
                try:
                    written = _upsert(UnitOfWork(connection), phase, item, self.workspace_key)
                except PoisonEventError as error:
                    # Its id counts as listed, so it is not deleted either.
                    log.warning("%s: left %s alone, it cannot be read: %s", phase, entity_id, error)
                    return "invalid"
                if written:
                    return "updated" if existed else "created"
                return "unchanged" if _exists(connection, table, entity_id) else "blocked"

        return attempt()

    # -- listing -----------------------------------------------------------------------------

    def _list(self, phase: str, checkpoint: Checkpoint) -> None:
        offset = checkpoint.offsets[phase]
        total = self.api.count_users() if phase == USERS else None
        begun = False
        try:
            while True:
                page = self.api.list_page(phase, offset, self.page_size)
                if not begun:
                    self.progress.begin(phase, page.total if total is None else total, offset)
                    begun = True
                counts = Counts()
                for item in page.items:
                    counts.add(self._apply(phase, item))
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
                self.progress.advance(len(page.items))
                if len(page.items) < self.page_size:
                    break
        finally:
            if begun:
                self.progress.end()
        self._record(checkpoint, {"record": "listed", "phase": phase})

    # -- deleting what Clerk no longer has ---------------------------------------------------

    def _sweep(self, phase: str, checkpoint: Checkpoint) -> None:
        table = TABLES[phase]
        cutoff = checkpoint.started_at - self.clock_skew_margin
        with self.engine.connect() as connection:
            stored = connection.execute(select(table.c.id, table.c.synced_at)).all()
        missing = [row for row in stored if row.id not in checkpoint.seen[phase]]
        recent = sorted(row.id for row in missing if _as_utc(row.synced_at) >= cutoff)
        candidates = sorted(
            row.id
            for row in missing
            if _as_utc(row.synced_at) < cutoff and row.id not in checkpoint.checked[phase]
        )
        if (
            not self.allow_mass_deletion
            and len(candidates) > MASS_DELETION_MINIMUM
            and len(candidates) > MASS_DELETION_FRACTION * len(stored)
        ):
            raise MassDeletionError(
                f"{len(candidates)} of {len(stored)} stored {phase} are missing from Clerk's "
                "listing: is CLERK_SECRET_KEY the key of this database's Clerk instance? "
                "Nothing of them was deleted; allow it with --allow-mass-deletion"
            )
        self.progress.begin(f"{phase} (checking missing)", len(candidates), 0)
        try:
            for entity_id in candidates:
                counts = self._check(phase, entity_id, checkpoint)
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

    def _check(self, phase: str, entity_id: str, checkpoint: Checkpoint) -> Counts:
        """Look one candidate up in Clerk: apply it if it is there, delete it if it is not."""
        counts = Counts()
        if phase == MEMBERSHIPS:
            with self.engine.connect() as connection:
                row = connection.execute(
                    select(
                        organization_memberships.c.organization_id,
                        organization_memberships.c.user_id,
                        organization_memberships.c.created_at,
                    ).where(organization_memberships.c.id == entity_id)
                ).one_or_none()
            if row is None:  # gone meanwhile (a webhook, a supersession)
                return counts
            found = self.api.memberships_of(row.organization_id, row.user_id) or []
            if not any(id_of(item) == entity_id for item in found):
                self._delete(
                    lambda work: remove_membership(
                        work, row.organization_id, entity_id, row.created_at, _now_ms()
                    )
                )
                counts.add("deleted")
            for item in found:
                counts.add(self._apply(phase, item))
            return counts
        lookup = self.api.get_organization if phase == ORGANIZATIONS else self.api.get_user
        current = lookup(entity_id)
        if current is not None:
            counts.add(self._apply(phase, current))
            return counts
        if phase == ORGANIZATIONS:
            self._delete(lambda work: delete_organization(work, entity_id, _now_ms()))
        else:
            self._delete(lambda work: delete_user(work, entity_id, _now_ms()))
        counts.add("deleted")
        return counts

    def _delete(self, mutation: Callable[[UnitOfWork], None]) -> None:
        @retry_transient
        def attempt() -> None:
            with self._unit() as connection:
                mutation(UnitOfWork(connection))

        attempt()

    def _record(self, checkpoint: Checkpoint, record: dict[str, Any]) -> None:
        self.journal.append(record)
        checkpoint.apply(record)


def _nonzero(counts: Counts) -> dict[str, int]:
    return {outcome: count for outcome, count in counts.as_dict().items() if count}


def _now_ms() -> int:
    return int(time.time() * 1000)


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
    )
    try:
        with hold_session_lock(engine, RUN_LOCK):
            return reconciler.run()
    except LockBusyError as busy:
        raise ReconcileBusyError("another reconcile run is in progress") from busy
