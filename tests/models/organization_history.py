"""``ClerkHistory`` with the rest of Clerk's organization model: permissions, roles (embedding
the current copies of their permissions), invitations and domains, mixed with the organization,
membership and user actions.

* permission created / renamed or re-keyed / deleted (no ``role.updated`` follows: Clerk does
  not say it sends one);
* role created (a key no live role holds, from a pool that overlaps the memberships' roles) /
  updated (its permission set, or its key) / deleted (even while members hold its key);
* member invited (``organizationInvitation.created``), then accepted by a user (``.accepted``,
  with ``user_id``) or revoked (``.revoked``);
* domain created / updated (enrollment mode, verification) / deleted (a DeletedObject without
  organization).

Deleting an organization takes its invitations and domains (no event); deleting a user leaves
the invitations it accepted without an email address. The expected tables follow
``models.derived``: a membership's permissions are those of the live role holding its key (the
smallest id), the keys of its permissions that are live, sorted; else what it listed.
"""

from __future__ import annotations

import copy
from typing import Any

from sqlalchemy import Engine

from models.tables import (
    organization_domains,
    organization_invitations,
    organization_permissions,
    organization_roles,
)
from tests.factories import (
    deleted_object_data,
    domain_data,
    invitation_data,
    permission_data,
    role_data,
    verification_data,
)
from tests.models.histories import ClerkHistory
from tests.models.support import rows

CREATE_PERMISSION = 9
CHANGE_PERMISSION = 10
DELETE_PERMISSION = 11
CREATE_ROLE = 12
CHANGE_ROLE_DEFINITION = 13
DELETE_ROLE = 14
INVITE = 15
ANSWER_INVITATION = 16
CREATE_DOMAIN = 17
CHANGE_DOMAIN = 18
DELETE_DOMAIN = 19

ROLE_KEYS = ("org:member", "org:admin", "org:billing", "org:viewer")
"""Overlapping the memberships' roles (``tests.models.histories.ROLES``)."""
PERMISSION_KEYS = ("org:a:read", "org:a:write", "org:b:read", "org:b:manage", "org:c:read")
MODEL_TABLES = (
    organization_roles,
    organization_permissions,
    organization_invitations,
    organization_domains,
)


def model_tables(engine: Engine) -> tuple[list[dict[str, Any]], ...]:
    """Roles, permissions, invitations and domains, without ``synced_at``/``synced_by``."""
    return tuple(rows(engine, table) for table in MODEL_TABLES)


class OrganizationHistory(ClerkHistory):
    def __init__(self, organization_slots: int, user_count: int = 3, *, start: int = 0) -> None:
        super().__init__(organization_slots, user_count, start=start)
        self.permissions: dict[str, dict[str, Any]] = {}
        self.roles: dict[str, dict[str, Any]] = {}
        self.invitations: dict[str, dict[str, Any]] = {}
        """Every invitation of a live organization, whatever its status."""
        self.domains: dict[str, dict[str, Any]] = {}
        self.deleted_users: set[str] = set()
        self._made = 0

    # -- the truth ---------------------------------------------------------------------------

    def granted(self, role_key: str) -> list[str] | None:
        holders = sorted(role_id for role_id, data in self.roles.items() if data["key"] == role_key)
        if not holders:
            return None
        ids = [permission["id"] for permission in self.roles[holders[0]]["permissions"]]
        return sorted({self.permissions[p]["key"] for p in ids if p in self.permissions})

    def expected_model(self) -> tuple[list[dict[str, Any]], ...]:
        """What ``model_tables`` should read after full delivery."""
        return (
            [_role_row(data) for _, data in sorted(self.roles.items())],
            [_permission_row(data) for _, data in sorted(self.permissions.items())],
            [self._invitation_row(data) for _, data in sorted(self.invitations.items())],
            [_domain_row(data) for _, data in sorted(self.domains.items())],
        )

    def _invitation_row(self, data: dict[str, Any]) -> dict[str, Any]:
        accepted_by = data.get("user_id")
        erased = accepted_by is not None and accepted_by in self.deleted_users
        return {
            "id": data["id"],
            "organization_id": data["organization_id"],
            "email_address": None if erased else data["email_address"],
            "role": data["role"],
            "role_name": data["role_name"],
            "status": data["status"],
            "public_metadata": data["public_metadata"],
            "url": data["url"],
            "inviter_id": data["inviter_id"],
            "user_id": accepted_by,
            "expires_at": data["expires_at"],
            "created_at": data["created_at"],
            "updated_at": data["updated_at"],
        }

    # -- driving it --------------------------------------------------------------------------

    def perform(self, kind: int, a: int, b: int, step: int) -> None:
        if kind < CREATE_PERMISSION:
            super().perform(kind, a, b, step)
            return
        self.clock += step
        if kind <= DELETE_PERMISSION:
            self._permission_action(kind, a, b)
        elif kind <= DELETE_ROLE:
            self._role_action(kind, a, b)
        elif kind <= ANSWER_INVITATION:
            self._invitation_action(kind, a, b)
        else:
            self._domain_action(kind, a, b)

    def _permission_action(self, kind: int, a: int, b: int) -> None:
        live = sorted(self.permissions)
        if kind == CREATE_PERMISSION or not live:
            keys = [key for key in PERMISSION_KEYS if key not in self._permission_keys()]
            if keys:
                permission_id = self._new_id("perm")
                data = permission_data(
                    permission_id, key=keys[b % len(keys)], created_at=self.clock
                )
                self.permissions[permission_id] = data
                self._emit("permission.created", data, f"{permission_id} {data['key']}")
            return
        permission_id = live[a % len(live)]
        if kind == DELETE_PERMISSION:
            del self.permissions[permission_id]
            self._emit(
                "permission.deleted",
                deleted_object_data("permission", permission_id),
                f"{permission_id} deleted",
                timestamp=self.clock,
            )
            return
        data = copy.deepcopy(self.permissions[permission_id])
        keys = [key for key in PERMISSION_KEYS if key not in self._permission_keys()]
        if b % 2 and keys:
            data["key"] = keys[b % len(keys)]
        else:
            data["name"] = f"Permission v{self.clock}"
        data["updated_at"] = self.clock
        self.permissions[permission_id] = data
        self._emit("permission.updated", data, f"{permission_id} -> {data['key']}")

    def _role_action(self, kind: int, a: int, b: int) -> None:
        live = sorted(self.roles)
        free_keys = [key for key in ROLE_KEYS if key not in {r["key"] for r in self.roles.values()}]
        if kind == CREATE_ROLE or not live:
            if free_keys:
                role_id = self._new_id("role")
                data = role_data(
                    role_id,
                    key=free_keys[b % len(free_keys)],
                    permissions=self._some_permissions(b),
                    created_at=self.clock,
                )
                self.roles[role_id] = data
                self._emit("role.created", data, f"{role_id} {data['key']}")
            return
        role_id = live[a % len(live)]
        if kind == DELETE_ROLE:
            del self.roles[role_id]
            self._emit(
                "role.deleted",
                deleted_object_data("role", role_id),
                f"{role_id} deleted",
                timestamp=self.clock,
            )
            return
        data = copy.deepcopy(self.roles[role_id])
        if b % 3 == 0 and free_keys:
            data["key"] = free_keys[b % len(free_keys)]
        else:
            data["permissions"] = self._some_permissions(b + a)
        # Clerk embeds its permissions as they are now (a deleted one is gone from the role).
        ids = [p["id"] for p in data["permissions"] if p["id"] in self.permissions]
        data["permissions"] = [copy.deepcopy(self.permissions[p]) for p in ids]
        data["updated_at"] = self.clock
        self.roles[role_id] = data
        self._emit("role.updated", data, f"{role_id} -> {data['key']} {ids}")

    def _some_permissions(self, variant: int) -> list[dict[str, Any]]:
        live = sorted(self.permissions)
        chosen = [p for n, p in enumerate(live) if (variant >> n) % 2 == 1]
        return [copy.deepcopy(self.permissions[p]) for p in chosen]

    def _invitation_action(self, kind: int, a: int, b: int) -> None:
        pending = sorted(i for i, data in self.invitations.items() if data["status"] == "pending")
        live = sorted(self.organizations)
        if (kind == INVITE or not pending) and live:
            organization_id = live[a % len(live)]
            invitation_id = self._new_id("orginv")
            data = invitation_data(
                organization_id,
                invitation_id=invitation_id,
                email=f"invitee{b % 3}@example.com",
                role=ROLE_KEYS[b % 2],
                created_at=self.clock,
            )
            self.invitations[invitation_id] = data
            self._emit("organizationInvitation.created", data, f"{invitation_id} created")
            return
        if not pending:
            return
        invitation_id = pending[a % len(pending)]
        data = copy.deepcopy(self.invitations[invitation_id])
        data["updated_at"] = self.clock
        if b % 2:
            data["status"] = "accepted"
            data["user_id"] = self.ensure_user(b)
            event_type = "organizationInvitation.accepted"
        else:
            data["status"] = "revoked"
            event_type = "organizationInvitation.revoked"
        self.invitations[invitation_id] = data
        self._emit(event_type, data, f"{invitation_id} {data['status']}")

    def _domain_action(self, kind: int, a: int, b: int) -> None:
        live = sorted(self.domains)
        organizations = sorted(self.organizations)
        if (kind == CREATE_DOMAIN or not live) and organizations:
            organization = self.organizations[organizations[a % len(organizations)]]
            domain_id = self._new_id("orgdmn")
            data = domain_data(
                organization,
                domain_id=domain_id,
                name=f"d{self._made}.example.com",
                created_at=self.clock,
                with_organization=b % 2 == 0,
            )
            self.domains[domain_id] = data
            self._emit("organizationDomain.created", data, f"{domain_id} created")
            return
        if not live:
            return
        domain_id = live[a % len(live)]
        if kind == DELETE_DOMAIN:
            del self.domains[domain_id]
            self._emit(
                "organizationDomain.deleted",
                deleted_object_data("organization_domain", domain_id),
                f"{domain_id} deleted",
                timestamp=self.clock,
            )
            return
        data = copy.deepcopy(self.domains[domain_id])
        data.pop("public_organization_data", None)
        modes = ("manual_invitation", "automatic_invitation", "automatic_suggestion")
        data["enrollment_mode"] = modes[b % 3]
        verification = verification_data(("unverified", "verified", "failed")[b % 3])
        data["affiliation_verification"] = data["verification"] = verification
        if b % 2:
            data["ownership_verification"] = verification_data(strategy="manual_override")
        data["updated_at"] = self.clock
        self.domains[domain_id] = data
        self._emit("organizationDomain.updated", data, f"{domain_id} updated")

    # -- what other actions imply -------------------------------------------------------------

    def delete_organization(self, organization_id: str, *, member_events: bool) -> None:
        super().delete_organization(organization_id, member_events=member_events)
        for table in (self.invitations, self.domains):
            for key in [
                k for k, data in table.items() if data["organization_id"] == organization_id
            ]:
                del table[key]

    def delete_user(self, user_id: str, *, member_events: bool) -> None:
        super().delete_user(user_id, member_events=member_events)
        self.deleted_users.add(user_id)

    def _permission_keys(self) -> set[str]:
        return {data["key"] for data in self.permissions.values()}

    def _new_id(self, prefix: str) -> str:
        self._made += 1
        return f"{prefix}_{self._made:03d}"


def _role_row(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": data["id"],
        "key": data["key"],
        "name": data["name"],
        "description": data["description"],
        "permission_ids": [permission["id"] for permission in data["permissions"]],
        "is_creator_eligible": data["is_creator_eligible"],
        "created_at": data["created_at"],
        "updated_at": data["updated_at"],
    }


def _permission_row(data: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": data["id"],
        "key": data["key"],
        "name": data["name"],
        "description": data["description"],
        "type": data["type"],
        "created_at": data["created_at"],
        "updated_at": data["updated_at"],
    }


def _domain_row(data: dict[str, Any]) -> dict[str, Any]:
    ownership = data["ownership_verification"]
    return {
        "id": data["id"],
        "organization_id": data["organization_id"],
        "name": data["name"],
        "enrollment_mode": data["enrollment_mode"],
        "verification_status": data["affiliation_verification"]["status"],
        "ownership_verification_status": None if ownership is None else ownership["status"],
        "affiliation_email_address": data["affiliation_email_address"],
        "total_pending_invitations": data["total_pending_invitations"],
        "total_pending_suggestions": data["total_pending_suggestions"],
        "created_at": data["created_at"],
        "updated_at": data["updated_at"],
    }
