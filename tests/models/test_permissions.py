"""permission.created / .updated / .deleted, applied through the worker's real path: versioned,
tombstoned, create-on-update; a permission's new key or deletion reaches the ``permissions`` of
the members of every role granting it."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine

from models.tables import organization_permissions
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


def permission(**overrides: Any) -> dict[str, Any]:
    return permission_data("perm_1", **{"key": "org:reports:read", **overrides})


def deleted(permission_id: str = "perm_1", at: int = DELETED_AT) -> dict[str, Any]:
    return event(
        "permission.deleted", deleted_object_data("permission", permission_id), timestamp=at
    )


def permission_rows(engine: Engine) -> list[dict[str, Any]]:
    return rows(engine, organization_permissions)


def test_created_stores_every_column(engine: Engine) -> None:
    assert deliver(engine, event("permission.created", permission())) == "applied"

    assert permission_rows(engine) == [
        {
            "id": "perm_1",
            "key": "org:reports:read",
            "name": "Read reports",
            "description": "View the organization's reports",
            "type": "custom",
            "created_at": BASE_TIME_MS,
            "updated_at": BASE_TIME_MS,
        }
    ]


def test_newer_update_wins_and_stale_or_equal_ones_are_ignored(engine: Engine) -> None:
    later = BASE_TIME_MS + HOUR
    assert deliver(engine, event("permission.updated", permission(name="New", updated_at=later)))
    deliver(engine, event("permission.created", permission(name="Stale")))
    deliver(engine, event("permission.updated", permission(name="Equal", updated_at=later)))

    assert [row["name"] for row in permission_rows(engine)] == ["New"]


def test_deleted_permission_stays_deleted_whatever_arrives_later(engine: Engine) -> None:
    deliver(engine, event("permission.created", permission()))

    assert deliver(engine, deleted()) == "applied"
    deliver(engine, event("permission.updated", permission(updated_at=DELETED_AT + HOUR)))

    assert permission_rows(engine) == []
    tombstone = tombstone_row(engine, "permission", "perm_1")
    assert tombstone is not None
    assert tombstone["deleted_at"] == DELETED_AT


@pytest.mark.parametrize("permission_first", [True, False])
def test_a_new_key_and_a_deletion_reach_the_members_of_granting_roles(
    engine: Engine, permission_first: bool
) -> None:
    renamed = permission(key="org:reports:export", updated_at=BASE_TIME_MS + HOUR)
    setup = [
        event("role.created", role_data("role_1", key="org:viewer", permissions=[permission()])),
        event(
            "organizationMembership.created",
            membership_data(
                organization_data("org_1"),
                membership_id="orgmem_1",
                role="org:viewer",
                permissions=["org:listed"],
            ),
        ),
    ]
    for payload in (
        [event("permission.updated", renamed), *setup]
        if permission_first
        else [
            *setup,
            event("permission.updated", renamed),
        ]
    ):
        assert deliver(engine, payload) == "applied"

    row = membership_row(engine, "orgmem_1")
    assert row is not None
    assert row["permissions"] == ["org:reports:export"]

    deliver(engine, deleted())
    row = membership_row(engine, "orgmem_1")
    assert row is not None
    assert row["permissions"] == [], "the role holds its key, and grants nothing that exists"


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (event("permission.created", {**permission(), "name": ""}), "data.name"),
        (event("permission.updated", {"id": "perm_1", "object": "permission"}), "data.key"),
        (event("permission.deleted", {"object": "permission", "deleted": True}), "data.id"),
    ],
)
def test_payloads_without_what_a_mutation_needs_are_dead_letters(
    engine: Engine, payload: dict[str, Any], error: str
) -> None:
    assert_dead_letter(engine, payload, error)
    assert permission_rows(engine) == []
