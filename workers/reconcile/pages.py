"""Writing one page of a listing: every object of the page in one transaction, through the
webhook mutation rules and the unit of work the worker's batches use.

As ``workers.processing.apply_batch`` does for a batch of events: the page's organization and
user locks are taken up front, in the one global order (``UnitOfWork.take_locks``, via
``workers.processing.prepare``: a page cannot deadlock with the workers' batches), the
tombstones, membership holders and organization versions it looks up are read ahead, and so
are the page's stored rows (``UnitOfWork.read_rows``). Then each object goes through its rule
(``upsert_user`` …) inside ``writing_together``: a page is a handful of statements, not one
transaction per object. Rows already at the listed version are skipped without a write,
unless their content differs (``repair``: Clerk's copy wins, reported ``repaired``).

A page is read (``read_page``: Clerk's objects parsed into the rules' snapshots, what they
touch gathered) by the thread that fetched it, while the run writes the previous one
(``write_page``). A page fetched before a webhook and written after it cannot undo it: the
rules' version guards compare with what is stored when the page is written, under its locks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import Connection, Engine, bindparam, select

from models import versioned
from models.changes import RECONCILE
from models.domains import upsert_domain
from models.invitations import upsert_invitation
from models.memberships import upsert_membership
from models.organizations import upsert_organization
from models.permissions import upsert_permission
from models.roles import upsert_role
from models.unit_of_work import UnitOfWork
from models.users import upsert_user
from models.versioned import Versioned
from workers.handlers import Targets
from workers.handlers.domains import domain_snapshot
from workers.handlers.invitations import invitation_snapshot
from workers.handlers.memberships import membership_snapshot
from workers.handlers.payloads import PoisonEventError, organization_snapshot
from workers.handlers.permissions import permission_snapshot
from workers.handlers.roles import role_snapshot
from workers.handlers.users import user_snapshot
from workers.processing import read_targets, take_targets
from workers.reconcile.clerk_api import Page, id_of
from workers.reconcile.phases import (
    DOMAINS,
    INVITATIONS,
    MEMBERSHIPS,
    ORGANIZATIONS,
    PERMISSIONS,
    ROLES,
    USERS,
)
from workers.reconcile.report import Counts
from workers.retries import retry_transient

log = logging.getLogger("clerk_sync.reconcile")


@dataclass(frozen=True)
class Entity:
    """How a listed object of one phase is read and applied."""

    kind: Versioned
    event_type: str
    """The webhook event whose payload ``data`` the listed object is: what it touches (locks,
    tombstones, holders) is read as the worker reads that event's."""
    snapshot: Callable[[Mapping[str, Any], str], Any]
    """Clerk's object (and the workspace metadata key) → the rule's snapshot; raises
    ``PoisonEventError`` or ``ValueError`` when it cannot be read."""
    upsert: Callable[[UnitOfWork, Any], bool]

    def version(self, snapshot: Any) -> tuple[int, ...]:
        return tuple(getattr(snapshot, name) for name in self.kind.version)


ENTITIES: Final[dict[str, Entity]] = {
    PERMISSIONS: Entity(
        versioned.PERMISSIONS,
        "permission.updated",
        lambda data, _key: permission_snapshot(data),
        upsert_permission,
    ),
    ROLES: Entity(
        versioned.ROLES, "role.updated", lambda data, _key: role_snapshot(data), upsert_role
    ),
    ORGANIZATIONS: Entity(
        versioned.ORGANIZATIONS, "organization.updated", organization_snapshot, upsert_organization
    ),
    USERS: Entity(
        versioned.USERS, "user.updated", lambda data, _key: user_snapshot(data), upsert_user
    ),
    MEMBERSHIPS: Entity(
        versioned.MEMBERSHIPS,
        "organizationMembership.updated",
        membership_snapshot,
        upsert_membership,
    ),
    INVITATIONS: Entity(
        versioned.INVITATIONS,
        "organizationInvitation.created",
        lambda data, _key: invitation_snapshot(data),
        upsert_invitation,
    ),
    DOMAINS: Entity(
        versioned.DOMAINS,
        "organizationDomain.updated",
        lambda data, _key: domain_snapshot(data),
        upsert_domain,
    ),
}
"""Each phase's table, the webhook its listed objects are the ``data`` of, their reader (the
webhook handler's) and rule."""


@dataclass
class ReadPage:
    """A page of Clerk's objects, read: the snapshots to apply (by id) and what they touch."""

    page: Page
    snapshots: dict[str, Any]
    targets: Targets
    invalid: int

    @property
    def size(self) -> int:
        return len(self.page.items)


def read_page(entity: Entity, page: Page, workspace_key: str) -> ReadPage:
    """Parse a page of Clerk's objects; an object that cannot be read is counted ``invalid``,
    logged and left alone (its id counts as listed, so it is not deleted either)."""
    snapshots: dict[str, Any] = {}
    targets = Targets()
    invalid = 0
    for item in page.items:
        try:
            snapshot = entity.snapshot(item, workspace_key)
        except (PoisonEventError, ValueError) as error:
            log.warning("left %s alone, it cannot be read: %s", id_of(item), error)
            invalid += 1
            continue
        if snapshot.id not in snapshots:
            snapshots[snapshot.id] = snapshot
            # What the worker's batch would take and read for the webhook carrying this object.
            targets.add({"type": entity.event_type, "data": item})
    return ReadPage(page, snapshots, targets, invalid)


def write_page(engine: Engine, entity: Entity, read: ReadPage, *, dry_run: bool) -> Counts:
    """Apply one read page in one transaction (rolled back in a dry run); returns the outcome
    counts. Transient database errors are retried with the whole page."""
    counts = Counts(invalid=read.invalid)
    if read.snapshots:
        for outcome in _write(engine, entity, read, dry_run=dry_run):
            counts.add(outcome)
    return counts


@retry_transient
def _write(engine: Engine, entity: Entity, read: ReadPage, *, dry_run: bool) -> list[str]:
    with engine.connect() as connection:
        transaction = connection.begin()
        try:
            outcomes = _apply(connection, entity, read)
        except BaseException:
            transaction.rollback()
            raise
        if dry_run:
            transaction.rollback()
        else:
            transaction.commit()
    return outcomes


def _apply(connection: Connection, entity: Entity, read: ReadPage) -> list[str]:
    """As ``workers.processing.prepare`` and ``apply_batch`` do: every lock up front, in the
    global order, the lookups read ahead, then the writes together."""
    snapshots, targets = read.snapshots, read.targets
    work = UnitOfWork(connection, repair=True, source=RECONCILE)
    take_targets(work, targets)
    read_targets(work, targets)
    stored = work.read_rows(entity.kind, list(snapshots))
    written: dict[str, bool] = {}
    with work.writing_together():
        for key, snapshot in snapshots.items():
            written[key] = entity.upsert(work, snapshot)
    left = [key for key, was_written in written.items() if not was_written and key in stored]
    remaining = _existing(connection, entity.kind, left) if left else set()
    outcomes = []
    for key, snapshot in snapshots.items():
        before = stored.get(key)
        if written[key]:
            if before is None:
                outcomes.append("created")
            elif entity.kind.version_of(before) == entity.version(snapshot):
                outcomes.append("repaired")
            else:
                outcomes.append("updated")
        else:
            # Not written: already at this version or newer, or refused (tombstoned,
            # superseded, which may have removed the stored row).
            outcomes.append("unchanged" if key in remaining else "blocked")
    return outcomes


def _existing(connection: Connection, kind: Versioned, ids: list[str]) -> set[str]:
    statement = select(kind.table.c.id).where(
        kind.table.c.id.in_(bindparam("p_ids", expanding=True))
    )
    return set(connection.execute(statement, {"p_ids": ids}).scalars())
