"""A small model of Clerk that turns admin actions into the webhooks Clerk would send.

``ClerkHistory`` keeps the true current state (live organizations and memberships) and emits one
event per change, each under its own svix id, in the order Clerk would produce them:

* organization created (optionally with its creator's membership, as the dashboard does);
* organization renamed / re-slugged / metadata changed (strictly increasing ``updated_at``);
* member added (``organizationMembership.created`` carrying the organization's CURRENT version);
* role changed (``organizationMembership.updated``);
* member removed (``organizationMembership.deleted``: the full membership as last changed, the
  envelope timestamp dating the deletion);
* member removed and re-added (a new ``orgmem_`` id with a later ``created_at``; optionally the
  same id, should Clerk ever reuse one);
* organization deleted (optionally followed by ``organizationMembership.deleted`` per member);
* user created (``user.created``, the first time a user slot is needed: as an organization's
  creator or a new member);
* user changed (``user.updated``: names, username, primary email (sometimes none), metadata,
  external id);
* user deleted (``user.deleted``, a DeletedObject dated by the envelope; Clerk removes the user's
  memberships everywhere, optionally sending ``organizationMembership.deleted`` for each). The
  slot then holds a new user id: Clerk never reuses ids.

The clock advances monotonically across the whole history. Ids are deterministic so that a
failing example reads well and reproduces.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from tests.factories import (
    BASE_TIME_MS,
    body_of,
    deleted_organization_data,
    deleted_user_data,
    email_address_data,
    event,
    membership_data,
    organization_data,
    user_data,
)
from tests.models.support import (
    WORKSPACE_KEY,
    expected_membership,
    expected_organization,
    expected_user,
)

CREATE_ORGANIZATION = 0
UPDATE_ORGANIZATION = 1
ADD_MEMBER = 2
CHANGE_ROLE = 3
REMOVE_MEMBER = 4
READD_MEMBER = 5
DELETE_ORGANIZATION = 6
UPDATE_USER = 7
DELETE_USER = 8

SLUGS = ("acme", "globex", "initech", None)
"""A small pool, so that two live organizations often share a slug (slugs are not unique)."""

ROLES = ("org:member", "org:admin", "org:billing")


@dataclass(frozen=True)
class Delivery:
    svix_id: str
    body: str
    label: str

    def __repr__(self) -> str:
        return f"<{self.svix_id} {self.label}>"


class ClerkHistory:
    def __init__(self, organization_slots: int, user_count: int = 3, *, start: int = 0) -> None:
        self.clock = BASE_TIME_MS + start
        self.slots = organization_slots
        self.users = [f"user_{n:02d}" for n in range(user_count)]
        """User slots: the id each slot currently stands for (a new one after a deletion)."""
        self.people: dict[str, dict[str, Any]] = {}
        """Live users: id -> current ``data``."""
        self.organizations: dict[str, dict[str, Any]] = {}
        """Live organizations: id -> current ``data``."""
        self.members: dict[tuple[str, str], dict[str, Any]] = {}
        """Live memberships: (organization id, user id) -> current ``data``."""
        self.events: list[Delivery] = []
        self._organizations_created = 0
        self._memberships_created = 0
        self._versions = 0
        self._user_generations = [0] * user_count
        self.memberships_removed_with_users = 0
        """How many memberships ``delete_user`` removed (a measure of how interesting it was)."""

    # -- the truth ---------------------------------------------------------------------------

    def expected_organizations(self) -> list[dict[str, Any]]:
        return [
            expected_organization(data, WORKSPACE_KEY)
            for _, data in sorted(self.organizations.items())
        ]

    def expected_memberships(self) -> list[dict[str, Any]]:
        return sorted(
            (
                expected_membership(
                    data,
                    self._user_row(data["public_user_data"]["user_id"]),
                    self.granted(data["role"]),
                )
                for data in self.members.values()
            ),
            key=lambda row: row["id"],
        )

    def granted(self, _role_key: str) -> list[str] | None:
        """The permissions a stored role holding this key grants (None: no such role, the
        membership keeps what its event listed); see ``tests.models.organization_history``."""
        return None

    def _user_row(self, user_id: str) -> dict[str, Any] | None:
        """The member's ``users`` row, whose profile the membership's columns take."""
        data = self.people.get(user_id)
        return None if data is None else expected_user(data)

    def expected_users(self) -> list[dict[str, Any]]:
        return [expected_user(data) for _, data in sorted(self.people.items())]

    def expected_state(self) -> tuple[list[dict[str, Any]], ...]:
        """What ``tests.models.support.synced_tables`` should read after full delivery."""
        return self.expected_organizations(), self.expected_memberships(), self.expected_users()

    # -- driving it --------------------------------------------------------------------------

    def perform(self, kind: int, a: int, b: int, step: int) -> None:
        """Carry out one action; ``a``/``b`` pick targets and variants, ``step`` advances the
        clock (ms, >= 1). Actions that make no sense yet fall back to one that does."""
        self.clock += step
        if kind in (UPDATE_USER, DELETE_USER):
            people = sorted(self.people)
            if not people:
                self.ensure_user(a)
            elif kind == UPDATE_USER:
                self.update_user(people[a % len(people)], b)
            else:
                self.delete_user(people[a % len(people)], member_events=b % 2 == 0)
            return
        live = sorted(self.organizations)
        if kind == CREATE_ORGANIZATION or not live:
            if self._organizations_created < self.slots:
                self.create_organization(with_creator=b % 3 != 0, creator=a)
            elif live:
                self.update_organization(live[a % len(live)], b)
            return
        organization_id = live[a % len(live)]
        members = sorted(self.members)
        if kind in (CHANGE_ROLE, REMOVE_MEMBER, READD_MEMBER) and not members:
            kind = ADD_MEMBER
        if kind == UPDATE_ORGANIZATION:
            self.update_organization(organization_id, b)
        elif kind == ADD_MEMBER:
            user_id = self.ensure_user(b)
            if (organization_id, user_id) in self.members:
                self.change_role(organization_id, user_id, b)
            else:
                self.add_member(organization_id, user_id, ROLES[b % 2])
        elif kind == CHANGE_ROLE:
            self.change_role(*members[a % len(members)], b)
        elif kind == REMOVE_MEMBER:
            self.remove_member(*members[a % len(members)])
        elif kind == READD_MEMBER:
            organization_id, user_id = members[a % len(members)]
            reuse_id = b % 5 == 0
            old_id = self.members[(organization_id, user_id)]["id"]
            self.remove_member(organization_id, user_id)
            self.clock += step
            self.add_member(
                organization_id, user_id, ROLES[b % 3], membership_id=old_id if reuse_id else None
            )
        elif kind == DELETE_ORGANIZATION:
            self.delete_organization(organization_id, member_events=b % 2 == 0)

    # -- actions -----------------------------------------------------------------------------

    def create_organization(self, *, with_creator: bool, creator: int = 0) -> str:
        number = self._organizations_created
        self._organizations_created += 1
        organization_id = f"org_{chr(ord('A') + number)}"
        creator_id = self.ensure_user(creator)
        data = organization_data(
            organization_id,
            name=f"Organization {organization_id}",
            slug=SLUGS[number % len(SLUGS)],
            created_at=self.clock,
            updated_at=self.clock,
            public_metadata={WORKSPACE_KEY: f"ws_{organization_id}"} if number % 2 == 0 else {},
            created_by=creator_id,
        )
        self.organizations[organization_id] = data
        self._emit("organization.created", data, f"{organization_id} created")
        if with_creator:
            self.add_member(organization_id, creator_id, "org:admin")
        return organization_id

    def update_organization(self, organization_id: str, variant: int) -> None:
        self._versions += 1
        data = copy.deepcopy(self.organizations[organization_id])
        change = variant % 4
        if change == 0:
            data["name"] = f"Organization {organization_id} v{self._versions}"
        elif change == 1:
            data["slug"] = SLUGS[variant % len(SLUGS)]
        elif change == 2:
            metadata = dict(data["public_metadata"])
            if WORKSPACE_KEY in metadata and variant % 3 == 0:
                del metadata[WORKSPACE_KEY]
            else:
                metadata[WORKSPACE_KEY] = f"ws_{self._versions}"
            metadata["plan"] = ("free", "pro", "enterprise")[variant % 3]
            data["public_metadata"] = metadata
        else:
            data["max_allowed_memberships"] = 5 + self._versions
            data["image_url"] = f"https://img.clerk.com/org-{self._versions}"
        data["updated_at"] = self.clock
        self.organizations[organization_id] = data
        self._emit("organization.updated", data, f"{organization_id} updated v{self._versions}")

    def add_member(
        self,
        organization_id: str,
        user_id: str,
        role: str,
        *,
        membership_id: str | None = None,
    ) -> None:
        if membership_id is None:
            self._memberships_created += 1
            membership_id = f"orgmem_{self._memberships_created:03d}"
        data = membership_data(
            self._snapshot(organization_id),
            membership_id=membership_id,
            user_id=user_id,
            role=role,
            created_at=self.clock,
            first_name=user_id.title(),
            identifier=f"{user_id}@example.com",
        )
        self.members[(organization_id, user_id)] = data
        self._emit(
            "organizationMembership.created",
            data,
            f"{membership_id} created ({user_id} in {organization_id}, {role})",
        )

    def change_role(self, organization_id: str, user_id: str, variant: int) -> None:
        data = copy.deepcopy(self.members[(organization_id, user_id)])
        roles = [role for role in ROLES if role != data["role"]]
        data["role"] = roles[variant % len(roles)]
        data["public_metadata"] = {"changes": data["public_metadata"].get("changes", 0) + 1}
        data["organization"] = self._snapshot(organization_id)
        data["updated_at"] = self.clock
        self.members[(organization_id, user_id)] = data
        self._emit("organizationMembership.updated", data, f"{data['id']} -> {data['role']}")

    def remove_member(self, organization_id: str, user_id: str) -> None:
        data = copy.deepcopy(self.members.pop((organization_id, user_id)))
        data["organization"] = self._snapshot(organization_id)
        self._emit(
            "organizationMembership.deleted",
            data,
            f"{data['id']} deleted ({user_id} left {organization_id})",
            timestamp=self.clock,
        )

    def delete_organization(self, organization_id: str, *, member_events: bool) -> None:
        data = self.organizations.pop(organization_id)
        self._emit(
            "organization.deleted",
            deleted_organization_data(organization_id, data["slug"]),
            f"{organization_id} deleted",
            timestamp=self.clock,
        )
        for key in sorted(k for k in self.members if k[0] == organization_id):
            membership = self.members.pop(key)
            if member_events:
                self.clock += 1
                membership = copy.deepcopy(membership)
                membership["organization"] = copy.deepcopy(data)
                self._emit(
                    "organizationMembership.deleted",
                    membership,
                    f"{membership['id']} deleted with {organization_id}",
                    timestamp=self.clock,
                )

    def ensure_user(self, slot: int) -> str:
        """The user in ``slot``, created now (``user.created``) if it does not exist yet."""
        slot %= len(self.users)
        user_id = self.users[slot]
        if user_id not in self.people:
            data = user_data(
                user_id,
                first_name=user_id.title(),
                last_name="Tester",
                email=f"{user_id}@example.com",
                created_at=self.clock,
            )
            self.people[user_id] = data
            self._emit("user.created", data, f"{user_id} created")
        return user_id

    def update_user(self, user_id: str, variant: int) -> None:
        self._versions += 1
        data = copy.deepcopy(self.people[user_id])
        change = variant % 5
        if change == 0:
            data["first_name"] = f"{user_id.title()} v{self._versions}"
        elif change == 1:
            data["last_name"] = None if variant % 2 else f"Tester{self._versions}"
            data["username"] = f"{user_id}_{self._versions}"
        elif change == 2:
            address_id = f"idn_{user_id}_v{self._versions}"
            address = email_address_data(address_id, f"{user_id}.v{self._versions}@example.com")
            data["email_addresses"] = [*data["email_addresses"][-1:], address]
            data["primary_email_address_id"] = address_id
        elif change == 3:
            data["public_metadata"] = {"plan": ("free", "pro")[variant % 2], "v": self._versions}
            data["external_id"] = f"ext-{self._versions}" if variant % 3 else None
        elif variant % 2:
            data["email_addresses"] = []
            data["primary_email_address_id"] = None
        else:
            data["primary_email_address_id"] = f"idn_{user_id}_gone"
        data["updated_at"] = self.clock
        self.people[user_id] = data
        self._emit("user.updated", data, f"{user_id} updated v{self._versions}")

    def delete_user(self, user_id: str, *, member_events: bool) -> None:
        """Clerk removes the user from every organization; whether it sends a
        ``organizationMembership.deleted`` for each is not documented, so both are modelled."""
        data = self.people.pop(user_id)
        self._emit(
            "user.deleted",
            deleted_user_data(user_id, data["external_id"]),
            f"{user_id} deleted",
            timestamp=self.clock,
        )
        for key in sorted(k for k in self.members if k[1] == user_id):
            membership = self.members.pop(key)
            self.memberships_removed_with_users += 1
            if member_events:
                self.clock += 1
                membership = copy.deepcopy(membership)
                membership["organization"] = self._snapshot(key[0])
                self._emit(
                    "organizationMembership.deleted",
                    membership,
                    f"{membership['id']} deleted with {user_id}",
                    timestamp=self.clock,
                )
        slot = self.users.index(user_id)
        self._user_generations[slot] += 1
        self.users[slot] = f"user_{slot:02d}_{self._user_generations[slot]}"

    # -- the Backend API's view -------------------------------------------------------------

    def api_state(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        """What Clerk's Backend API lists now: live organizations, memberships (each carrying
        its organization as it is now) and users."""
        memberships = []
        for (organization_id, _), data in self.members.items():
            membership = copy.deepcopy(data)
            membership["organization"] = self._snapshot(organization_id)
            memberships.append(membership)
        return (
            [copy.deepcopy(data) for data in self.organizations.values()],
            memberships,
            [copy.deepcopy(data) for data in self.people.values()],
        )

    # -- plumbing ----------------------------------------------------------------------------

    def _snapshot(self, organization_id: str) -> dict[str, Any]:
        return copy.deepcopy(self.organizations[organization_id])

    def _emit(
        self, event_type: str, data: dict[str, Any], label: str, *, timestamp: int | None = None
    ) -> None:
        svix_id = f"msg_{len(self.events) + 1:04d}"
        payload = event(event_type, copy.deepcopy(data), timestamp=timestamp)
        self.events.append(Delivery(svix_id, body_of(payload), f"{event_type}: {label}"))
