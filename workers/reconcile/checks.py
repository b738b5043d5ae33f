"""The deletion guard's lookups: a stored entity missing from Clerk's listing is looked up by
itself, applied if Clerk still has it, and deleted (and tombstoned) only if Clerk says it is gone.

Per entity type, the lookup Clerk offers: by id (users, organizations, roles, permissions),
the member's memberships in the organization (memberships), the organization's domains (no
call reads one domain), the invitation by organization and id. **Invitations are never
deleted**: Clerk deletes none (they end ``accepted``, ``revoked`` or ``expired``), its lists may
omit the ones a domain created, so one Clerk cannot find is left as it is (reported ``kept``);
one it finds is applied (its status healed). Invitations of a deleted organization go with it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Final, Protocol

from sqlalchemy import Engine, Table, select

from models.domains import delete_domain
from models.memberships import remove_membership
from models.organizations import delete_organization
from models.permissions import delete_permission
from models.roles import delete_role
from models.tables import organization_domains, organization_invitations, organization_memberships
from models.unit_of_work import UnitOfWork
from models.users import delete_user
from workers.reconcile.clerk_api import ClerkAPI, id_of
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

Item = Mapping[str, Any]


class Run(Protocol):
    """What a lookup needs of the run (``workers.reconcile.reconciler.Reconciler``)."""

    engine: Engine
    api: ClerkAPI

    def apply(self, phase: str, items: list[Item]) -> Counts: ...

    def delete(self, mutation: Callable[[UnitOfWork], None]) -> None: ...


def check(run: Run, phase: str, entity_id: str) -> Counts:
    """Look one candidate up in Clerk: apply what Clerk has, delete what it says is gone."""
    return CHECKS[phase](run, phase, entity_id)


def _by_id(
    lookup: Callable[[ClerkAPI, str], Item | None],
    deletion: Callable[[UnitOfWork, str, int], None],
) -> Callable[[Run, str, str], Counts]:
    def checked(run: Run, phase: str, entity_id: str) -> Counts:
        current = lookup(run.api, entity_id)
        if current is not None:
            return run.apply(phase, [current])
        run.delete(lambda work: deletion(work, entity_id, _now_ms()))
        return Counts(deleted=1)

    return checked


def _stored(engine: Engine, table: Table, entity_id: str, *columns: str) -> Any:
    with engine.connect() as connection:
        return connection.execute(
            select(*(table.c[name] for name in columns)).where(table.c.id == entity_id)
        ).one_or_none()


def _membership(run: Run, phase: str, entity_id: str) -> Counts:
    counts = Counts()
    row = _stored(
        run.engine, organization_memberships, entity_id, "organization_id", "user_id", "created_at"
    )
    if row is None:  # gone meanwhile (a webhook, a supersession)
        return counts
    found = run.api.memberships_of(row.organization_id, row.user_id) or []
    if not any(id_of(item) == entity_id for item in found):
        run.delete(
            lambda work: remove_membership(
                work, row.organization_id, entity_id, row.created_at, _now_ms()
            )
        )
        counts.add("deleted")
    if found:
        counts.merge(run.apply(phase, found))
    return counts


def _domain(run: Run, phase: str, entity_id: str) -> Counts:
    row = _stored(run.engine, organization_domains, entity_id, "organization_id")
    if row is None:
        return Counts()
    found = [item for item in run.api.domains_of(row.organization_id) if id_of(item) == entity_id]
    if found:
        return run.apply(phase, found)
    run.delete(lambda work: delete_domain(work, entity_id, _now_ms()))
    return Counts(deleted=1)


def _invitation(run: Run, phase: str, entity_id: str) -> Counts:
    row = _stored(run.engine, organization_invitations, entity_id, "organization_id")
    if row is None:
        return Counts()
    current = run.api.get_invitation(row.organization_id, entity_id)
    if current is not None:
        return run.apply(phase, [current])
    return Counts(kept=1)


CHECKS: Final[dict[str, Callable[[Run, str, str], Counts]]] = {
    PERMISSIONS: _by_id(ClerkAPI.get_permission, delete_permission),
    ROLES: _by_id(ClerkAPI.get_role, delete_role),
    ORGANIZATIONS: _by_id(ClerkAPI.get_organization, delete_organization),
    USERS: _by_id(ClerkAPI.get_user, delete_user),
    MEMBERSHIPS: _membership,
    INVITATIONS: _invitation,
    DOMAINS: _domain,
}


def _now_ms() -> int:
    return int(time.time() * 1000)
