"""role.created / .updated / .deleted, applied through the worker's real path: versioned,
tombstoned, create-on-update; the permissions a role embeds are upserted too; and a role's
change reaches the ``permissions`` of the memberships holding its key (``models.derived``)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine

from models.tables import (
    organization_memberships,
    organization_permissions,
    organization_roles,
)
from tests.factories import (
    BASE_TIME_MS,
    deleted_object_data,
    event,
    membership_data,
    organization_data,
    permission_data,
    role_data,
)
from tests.models.support import (
    assert_dead_letter,
    deliver,
    membership_row,
    rows,
    tombstone_row,
)

HOUR = 3_600_000
DELETED_AT = BASE_TIME_MS + 10 * HOUR
READ = permission_data("perm_read", key="org:reports:read", name="Read reports")
MANAGE = permission_data("perm_manage", key="org:invoices:manage", name="Manage invoices")


def role(**overrides: Any) -> dict[str, Any]:
    return role_data("role_1", permissions=[READ], **overrides)


def created(data: dict[str, Any]) -> dict[str, Any]:
    return event("role.created", data)


def updated(data: dict[str, Any]) -> dict[str, Any]:
    return event("role.updated", data)


def deleted(role_id: str = "role_1", at: int = DELETED_AT) -> dict[str, Any]:
    return event("role.deleted", deleted_object_data("role", role_id), timestamp=at)


def role_rows(engine: Engine) -> list[dict[str, Any]]:
    return rows(engine, organization_roles)


def permission_rows(engine: Engine) -> list[dict[str, Any]]:
    return rows(engine, organization_permissions)


def member(role_key: str, listed: list[str], **overrides: Any) -> dict[str, Any]:
    return event(
        "organizationMembership.created",
        membership_data(
            organization_data("org_1"),
            membership_id="orgmem_1",
            user_id="user_1",
            role=role_key,
            permissions=listed,
            **overrides,
        ),
    )


def test_created_stores_the_role_and_the_permissions_it_embeds(engine: Engine) -> None:
    data = role_data("role_1", permissions=[READ, MANAGE], is_creator_eligible=True)

    assert deliver(engine, created(data)) == "applied"

    assert role_rows(engine) == [
        {
            "id": "role_1",
            "key": "org:billing_manager",
            "name": "Billing Manager",
            "description": data["description"],
            "permission_ids": ["perm_read", "perm_manage"],
            "is_creator_eligible": True,
            "created_at": BASE_TIME_MS,
            "updated_at": BASE_TIME_MS,
        }
    ]
    assert [(row["id"], row["key"], row["name"]) for row in permission_rows(engine)] == [
        ("perm_manage", "org:invoices:manage", "Manage invoices"),
        ("perm_read", "org:reports:read", "Read reports"),
    ]


def test_newer_update_wins_and_stale_or_equal_ones_are_ignored(engine: Engine) -> None:
    later = BASE_TIME_MS + HOUR
    assert deliver(engine, updated(role(name="Newer", updated_at=later))) == "applied"
    deliver(engine, created(role(name="Stale")))
    deliver(engine, updated(role(name="Equal", updated_at=later)))

    assert [row["name"] for row in role_rows(engine)] == ["Newer"]


def test_an_embedded_permission_never_overwrites_a_newer_one(engine: Engine) -> None:
    renamed = permission_data(
        "perm_read", key="org:reports:read", name="Renamed", updated_at=BASE_TIME_MS + HOUR
    )
    deliver(engine, event("permission.updated", renamed))
    deliver(engine, created(role()))  # embeds the older copy of perm_read

    assert [row["name"] for row in permission_rows(engine)] == ["Renamed"]


def test_deleted_role_stays_deleted_whatever_arrives_later(engine: Engine) -> None:
    deliver(engine, created(role()))

    assert deliver(engine, deleted()) == "applied"
    deliver(engine, updated(role(updated_at=DELETED_AT + HOUR)))
    deliver(engine, created(role()))

    assert role_rows(engine) == []
    tombstone = tombstone_row(engine, "role", "role_1")
    assert tombstone is not None
    assert tombstone["deleted_at"] == DELETED_AT


def test_deleting_an_unknown_role_still_blocks_it(engine: Engine) -> None:
    assert deliver(engine, deleted()) == "applied"
    assert deliver(engine, created(role())) == "applied"

    assert role_rows(engine) == []
    assert [row["id"] for row in permission_rows(engine)] == ["perm_read"]


def test_a_deleted_permission_embedded_in_a_role_stays_deleted(engine: Engine) -> None:
    deliver(engine, event("permission.deleted", deleted_object_data("permission", "perm_read")))
    deliver(engine, created(role()))

    assert permission_rows(engine) == []
    assert role_rows(engine)[0]["permission_ids"] == ["perm_read"]


@pytest.mark.parametrize("role_first", [True, False])
def test_members_of_a_role_get_its_permissions_in_either_order(
    engine: Engine, role_first: bool
) -> None:
    events = [
        created(role_data("role_1", permissions=[READ, MANAGE])),
        member("org:billing_manager", ["org:stale"]),
    ]
    for payload in events if role_first else reversed(events):
        assert deliver(engine, payload) == "applied"

    row = membership_row(engine, "orgmem_1")
    assert row is not None
    assert row["permissions"] == ["org:invoices:manage", "org:reports:read"]
    assert row["listed_permissions"] == ["org:stale"]


def test_a_role_change_reaches_its_members_and_a_renamed_key_leaves_them(engine: Engine) -> None:
    deliver(engine, created(role()))
    deliver(engine, member("org:billing_manager", ["org:listed"]))
    later = BASE_TIME_MS + HOUR

    deliver(engine, updated(role_data("role_1", permissions=[READ, MANAGE], updated_at=later)))
    row = membership_row(engine, "orgmem_1")
    assert row is not None
    assert row["permissions"] == ["org:invoices:manage", "org:reports:read"]

    renamed = role_data("role_1", key="org:billing", permissions=[READ], updated_at=later + 1)
    deliver(engine, updated(renamed))
    row = membership_row(engine, "orgmem_1")
    assert row is not None
    assert row["permissions"] == ["org:listed"], "no role holds its key now: what it listed"


def test_a_deleted_role_leaves_its_members_what_they_listed(engine: Engine) -> None:
    deliver(engine, created(role()))
    deliver(engine, member("org:billing_manager", ["org:listed"]))

    deliver(engine, deleted())

    row = membership_row(engine, "orgmem_1")
    assert row is not None
    assert row["permissions"] == ["org:listed"]


def test_a_role_update_that_changes_no_member_writes_no_member(engine: Engine) -> None:
    deliver(engine, created(role()))
    deliver(engine, member("org:billing_manager", []))
    before = rows(engine, organization_memberships, without=())  # synced_at too

    deliver(engine, updated(role(name="Renamed only", updated_at=BASE_TIME_MS + HOUR)))
    deliver(engine, event("permission.updated", {**READ, "updated_at": BASE_TIME_MS + HOUR}))
    # Recomputed (the role's set changed) to the same keys: the gone permission grants nothing.
    deliver(engine, event("permission.deleted", deleted_object_data("permission", "perm_manage")))
    deliver(engine, updated(role_data("role_1", permissions=[READ, MANAGE], updated_at=DELETED_AT)))

    assert rows(engine, organization_memberships, without=()) == before
    assert role_rows(engine)[0]["permission_ids"] == ["perm_read", "perm_manage"]


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (created({**role(), "key": None}), "data.key"),
        (created({**role(), "permissions": ["perm_read"]}), "data.permissions[0]"),
        (created({**role(), "permissions": [{"id": "perm_x"}]}), "data.permissions[0].key"),
        (created({**role(), "permissions": "all"}), "data.permissions"),
        (event("role.deleted", {"object": "role", "deleted": True}), "data.id"),
    ],
)
def test_payloads_without_what_a_mutation_needs_are_dead_letters(
    engine: Engine, payload: dict[str, Any], error: str
) -> None:
    assert_dead_letter(engine, payload, error)
    assert role_rows(engine) == []
    assert permission_rows(engine) == []


def test_role_deleted_without_envelope_time_is_a_dead_letter(engine: Engine) -> None:
    payload = deleted()
    del payload["timestamp"]

    assert deliver(engine, payload) == "dead"
    assert tombstone_row(engine, "role", "role_1") is None
