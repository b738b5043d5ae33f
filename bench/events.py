"""Realistic mixed Clerk event streams, built with the test suite's payload factories.

``EventStream`` plays a small Clerk instance forward: organizations are created (with their
creator as admin), renamed and deleted; members are added, change roles and leave; users are
created, edited and deleted. Each change becomes the webhook Clerk would send, in order, with a
unique svix id. Ids carry a per-stream tag, so streams made for different runs or databases
never collide. Everything is deterministic for a given tag and seed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from svix.webhooks import Webhook

from tests.factories import (
    BASE_TIME_MS,
    body_of,
    deleted_organization_data,
    deleted_user_data,
    event,
    membership_data,
    organization_data,
    user_data,
)

WEBHOOK_SECRET = "whsec_YmVuY2htYXJrLXNpZ25pbmcta2V5LTAwMDE="
"""The signing secret the benchmarks configure the ingress with (a fixed, test-only key)."""

WEBHOOK_PATH = "/webhook/clerk"

# What a busy instance sends, roughly: mostly membership and user churn, some organization
# edits, few deletions. The weights are per action; some actions emit several events.
ACTION_WEIGHTS: dict[str, int] = {
    "create_organization": 6,
    "update_organization": 12,
    "add_member": 26,
    "change_role": 14,
    "remove_member": 7,
    "create_user": 10,
    "update_user": 19,
    "delete_user": 3,
    "delete_organization": 2,
}

ROLES = ("org:member", "org:admin", "org:billing")
PLANS = ("free", "pro", "enterprise")


@dataclass(frozen=True)
class Event:
    svix_id: str
    event_type: str
    body: str


T = TypeVar("T")


class Bag(Generic[T]):
    """A set with O(1) add, remove and uniform random choice."""

    def __init__(self) -> None:
        self._items: list[T] = []
        self._positions: dict[T, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, item: object) -> bool:
        return item in self._positions

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._items))

    def add(self, item: T) -> None:
        if item not in self._positions:
            self._positions[item] = len(self._items)
            self._items.append(item)

    def remove(self, item: T) -> None:
        position = self._positions.pop(item)
        last = self._items.pop()
        if position < len(self._items):
            self._items[position] = last
            self._positions[last] = position

    def choice(self, rng: random.Random) -> T:
        return self._items[rng.randrange(len(self._items))]


@dataclass
class Membership:
    organization_id: str
    user_id: str
    data: dict[str, Any]


class EventStream:
    """An endless, ordered stream of the webhooks a busy Clerk instance sends."""

    def __init__(self, tag: str, seed: int = 0) -> None:
        self.tag = tag
        self._rng = random.Random(f"{tag}:{seed}")
        self._clock = BASE_TIME_MS
        self._counters: dict[str, int] = {}
        self._organizations: dict[str, dict[str, Any]] = {}
        self._organization_ids: Bag[str] = Bag()
        self._users: dict[str, dict[str, Any]] = {}
        self._user_ids: Bag[str] = Bag()
        self._memberships: dict[str, Membership] = {}
        self._membership_ids: Bag[str] = Bag()
        self._by_pair: dict[tuple[str, str], str] = {}
        self._members_of: dict[str, set[str]] = {}
        self._memberships_of_user: dict[str, set[str]] = {}
        self._pending: list[Event] = []
        self._actions = list(ACTION_WEIGHTS)
        self._weights = list(ACTION_WEIGHTS.values())

    def take(self, count: int) -> list[Event]:
        """The next ``count`` events."""
        while len(self._pending) < count:
            self._act()
        taken, self._pending = self._pending[:count], self._pending[count:]
        return taken

    # -- the instance --------------------------------------------------------------------------

    def _new_id(self, prefix: str) -> str:
        number = self._counters.get(prefix, 0) + 1
        self._counters[prefix] = number
        return f"{prefix}_{self.tag}{number:08d}"

    def _tick(self) -> int:
        self._clock += self._rng.randint(1, 900)
        return self._clock

    def _emit(self, event_type: str, data: dict[str, Any], timestamp: int | None = None) -> None:
        body = body_of(event(event_type, data, timestamp=timestamp))
        self._pending.append(Event(self._new_id("msg"), event_type, body))

    def _act(self) -> None:
        action = self._rng.choices(self._actions, self._weights)[0]
        if len(self._organization_ids) < 3:
            action = "create_organization"
        elif action in ("change_role", "remove_member") and not self._membership_ids:
            action = "add_member"
        elif action in ("update_user", "delete_user") and len(self._user_ids) < 3:
            action = "create_user"
        getattr(self, f"_{action}")()

    def _create_user(self) -> str:
        now = self._tick()
        user_id = self._new_id("user")
        first = self._rng.choice(("Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken"))
        data = user_data(
            user_id,
            first_name=first,
            last_name=f"Tester{self._rng.randint(1, 999)}",
            email=f"{first.lower()}.{user_id[-8:]}@example.com",
            created_at=now,
            public_metadata={"plan": self._rng.choice(PLANS)},
        )
        self._users[user_id] = data
        self._user_ids.add(user_id)
        self._emit("user.created", data)
        return user_id

    def _update_user(self) -> None:
        user_id = self._user_ids.choice(self._rng)
        data = dict(self._users[user_id])
        data["first_name"] = f"{data['first_name'] or 'User'}{self._rng.randint(1, 9)}"[:40]
        data["public_metadata"] = {"plan": self._rng.choice(PLANS), "seen": self._clock}
        data["updated_at"] = self._tick()
        self._users[user_id] = data
        self._emit("user.updated", data)

    def _delete_user(self) -> None:
        user_id = self._user_ids.choice(self._rng)
        now = self._tick()
        self._user_ids.remove(user_id)
        data = self._users.pop(user_id)
        self._emit("user.deleted", deleted_user_data(user_id, data.get("external_id")), now)
        for membership_id in sorted(self._memberships_of_user.pop(user_id, set())):
            membership = self._memberships[membership_id]
            membership.data = {
                **membership.data,
                "organization": self._organizations[membership.organization_id],
            }
            self._forget_membership(membership_id, send=True)

    def _create_organization(self) -> None:
        creator = (
            self._user_ids.choice(self._rng)
            if len(self._user_ids) >= 3 and self._rng.random() < 0.7
            else self._create_user()
        )
        now = self._tick()
        organization_id = self._new_id("org")
        data = organization_data(
            organization_id,
            name=f"Organization {organization_id[-8:]}",
            slug=f"org-{organization_id[-8:]}",
            created_at=now,
            updated_at=now,
            public_metadata={"convexWorkspaceId": f"ws_{organization_id[-8:]}"},
            created_by=creator,
        )
        self._organizations[organization_id] = data
        self._organization_ids.add(organization_id)
        self._members_of[organization_id] = set()
        self._emit("organization.created", data)
        self._add_member_to(organization_id, creator, "org:admin")

    def _update_organization(self) -> None:
        organization_id = self._organization_ids.choice(self._rng)
        data = dict(self._organizations[organization_id])
        if self._rng.random() < 0.5:
            data["name"] = f"Organization {organization_id[-8:]} v{self._rng.randint(2, 99)}"
        else:
            metadata = dict(data["public_metadata"])
            metadata["plan"] = self._rng.choice(PLANS)
            data["public_metadata"] = metadata
        data["members_count"] = len(self._members_of[organization_id])
        data["updated_at"] = self._tick()
        self._organizations[organization_id] = data
        self._emit("organization.updated", data)

    def _delete_organization(self) -> None:
        organization_id = self._organization_ids.choice(self._rng)
        now = self._tick()
        self._organization_ids.remove(organization_id)
        data = self._organizations.pop(organization_id)
        self._emit(
            "organization.deleted", deleted_organization_data(organization_id, data["slug"]), now
        )
        send = self._rng.random() < 0.5
        for membership_id in sorted(self._members_of.pop(organization_id, set())):
            membership = self._memberships[membership_id]
            membership.data = {**membership.data, "organization": data}
            self._forget_membership(membership_id, send=send)

    def _add_member(self) -> None:
        organization_id = self._organization_ids.choice(self._rng)
        user_id = (
            self._user_ids.choice(self._rng)
            if self._user_ids and self._rng.random() < 0.6
            else self._create_user()
        )
        if (organization_id, user_id) in self._by_pair:
            self._change_role_of(self._by_pair[(organization_id, user_id)])
        else:
            self._add_member_to(organization_id, user_id, self._rng.choice(ROLES[:2]))

    def _add_member_to(self, organization_id: str, user_id: str, role: str) -> None:
        now = self._tick()
        membership_id = self._new_id("orgmem")
        user = self._users.get(user_id, {})
        data = membership_data(
            self._organizations[organization_id],
            membership_id=membership_id,
            user_id=user_id,
            role=role,
            created_at=now,
            first_name=user.get("first_name"),
            identifier=f"{user_id[-8:]}@example.com",
        )
        self._memberships[membership_id] = Membership(organization_id, user_id, data)
        self._membership_ids.add(membership_id)
        self._by_pair[(organization_id, user_id)] = membership_id
        self._members_of[organization_id].add(membership_id)
        self._memberships_of_user.setdefault(user_id, set()).add(membership_id)
        self._emit("organizationMembership.created", data)

    def _change_role(self) -> None:
        self._change_role_of(self._membership_ids.choice(self._rng))

    def _change_role_of(self, membership_id: str) -> None:
        membership = self._memberships[membership_id]
        data = dict(membership.data)
        data["role"] = self._rng.choice([role for role in ROLES if role != data["role"]])
        data["public_metadata"] = {"changes": data["public_metadata"].get("changes", 0) + 1}
        data["organization"] = self._organizations[membership.organization_id]
        data["updated_at"] = self._tick()
        membership.data = data
        self._emit("organizationMembership.updated", data)

    def _remove_member(self) -> None:
        membership_id = self._membership_ids.choice(self._rng)
        membership = self._memberships[membership_id]
        self._members_of[membership.organization_id].discard(membership_id)
        self._memberships_of_user.get(membership.user_id, set()).discard(membership_id)
        membership.data = {
            **membership.data,
            "organization": self._organizations[membership.organization_id],
        }
        self._forget_membership(membership_id, send=True)

    def _forget_membership(self, membership_id: str, *, send: bool) -> None:
        membership = self._memberships.pop(membership_id)
        self._membership_ids.remove(membership_id)
        self._by_pair.pop((membership.organization_id, membership.user_id), None)
        self._members_of.get(membership.organization_id, set()).discard(membership_id)
        self._memberships_of_user.get(membership.user_id, set()).discard(membership_id)
        if send:
            self._emit("organizationMembership.deleted", membership.data, self._tick())


class Signer:
    """Signs many events with one ``svix.Webhook`` (building one per event costs more than the
    HMAC itself)."""

    def __init__(self, secret: str = WEBHOOK_SECRET) -> None:
        self._webhook = Webhook(secret)

    def headers(self, event: Event, at: datetime | None = None) -> dict[str, str]:
        at = at or datetime.now(UTC)
        return {
            "svix-id": event.svix_id,
            "svix-timestamp": str(int(at.timestamp())),
            "svix-signature": self._webhook.sign(event.svix_id, at, event.body),
            "content-type": "application/json",
        }
