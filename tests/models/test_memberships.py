"""organizationMembership.created / .updated / .deleted, applied through the worker's real path."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine

from tests.factories import (
    BASE_TIME_MS,
    event,
    membership_data,
    organization_data,
)
from tests.models.support import (
    deliver,
    expected_membership,
    expected_organization,
    membership_row,
    membership_rows,
    organization_row,
    organization_rows,
    tombstone_row,
)

MINUTE = 60_000
HOUR = 3_600_000


def changed(data: dict[str, Any], at: int, **changes: Any) -> dict[str, Any]:
    """The same membership after a change at ``at`` (Clerk bumps ``updated_at``)."""
    return {**data, **changes, "updated_at": at}


def created(data: dict[str, Any]) -> dict[str, Any]:
    return event("organizationMembership.created", data)


def updated(data: dict[str, Any]) -> dict[str, Any]:
    return event("organizationMembership.updated", data)


def deleted(data: dict[str, Any], at: int) -> dict[str, Any]:
    """Clerk's deleted payload: the full membership as last changed; the envelope dates it."""
    return event("organizationMembership.deleted", data, timestamp=at)


@pytest.fixture
def organization() -> dict[str, Any]:
    return organization_data("org_1", public_metadata={"convexWorkspaceId": "ws_1"})


def test_created_stores_every_column(engine: Engine, organization: dict[str, Any]) -> None:
    data = membership_data(
        organization,
        membership_id="orgmem_1",
        user_id="user_1",
        role="org:admin",
        public_metadata={"team": "red"},
    )

    assert deliver(engine, created(data)) == "applied"

    assert membership_rows(engine) == [expected_membership(data)]
    row = membership_rows(engine)[0]
    assert row["permissions"] == data["permissions"]
    assert row["last_name"] == "Tester"


def test_optional_user_fields_may_be_null_and_bad_permissions_are_dropped(
    engine: Engine, organization: dict[str, Any]
) -> None:
    data = membership_data(organization, first_name=None, identifier=None)
    data["public_user_data"]["last_name"] = None
    del data["public_user_data"]["image_url"]
    data["permissions"] = ["org:sys_memberships:read", 7, None]
    del data["public_metadata"]

    deliver(engine, created(data))

    row = membership_row(engine, data["id"])
    assert row is not None
    assert (row["first_name"], row["last_name"], row["identifier"], row["image_url"]) == (
        None,
        None,
        None,
        None,
    )
    assert row["permissions"] == ["org:sys_memberships:read"]
    assert row["public_metadata"] == {}


def test_membership_before_organization_creates_it_from_the_snapshot(
    engine: Engine, organization: dict[str, Any]
) -> None:
    """The creator's membership.created often lands before organization.created."""
    data = membership_data(organization, user_id="user_1")

    deliver(engine, created(data))

    assert organization_rows(engine) == [expected_organization(organization)]
    assert membership_rows(engine) == [expected_membership(data)]

    assert deliver(engine, event("organization.created", organization)) == "applied"
    assert organization_rows(engine) == [expected_organization(organization)]


def test_snapshot_advances_an_older_organization_but_never_regresses_it(
    engine: Engine, organization: dict[str, Any]
) -> None:
    deliver(engine, event("organization.created", organization))
    renamed = organization_data(
        "org_1", name="Renamed", public_metadata={}, updated_at=BASE_TIME_MS + HOUR
    )

    deliver(engine, created(membership_data(renamed, user_id="user_1")))
    assert organization_rows(engine) == [expected_organization(renamed)]

    deliver(engine, created(membership_data(organization, user_id="user_2")))
    assert organization_rows(engine) == [expected_organization(renamed)]
    assert len(membership_rows(engine)) == 2


def test_role_change_applies(engine: Engine, organization: dict[str, Any]) -> None:
    data = membership_data(organization, role="org:member")
    promoted = changed(
        data, data["created_at"] + HOUR, role="org:admin", permissions=["org:sys_profile:manage"]
    )

    deliver(engine, created(data))
    deliver(engine, updated(promoted))

    assert membership_rows(engine) == [expected_membership(promoted)]


def test_stale_update_is_ignored(engine: Engine, organization: dict[str, Any]) -> None:
    data = membership_data(organization)
    first = changed(data, data["created_at"] + MINUTE, role="org:admin")
    second = changed(data, data["created_at"] + 2 * MINUTE, role="org:billing")

    deliver(engine, created(data))
    deliver(engine, updated(second))
    deliver(engine, updated(first))
    deliver(engine, created(data))

    assert membership_rows(engine) == [expected_membership(second)]


def test_update_before_create(engine: Engine, organization: dict[str, Any]) -> None:
    data = membership_data(organization)
    promoted = changed(data, data["created_at"] + MINUTE, role="org:admin")

    deliver(engine, updated(promoted))
    deliver(engine, created(data))

    assert membership_rows(engine) == [expected_membership(promoted)]


def test_delete_removes_the_row_and_tombstones_it(
    engine: Engine, organization: dict[str, Any]
) -> None:
    data = membership_data(organization, membership_id="orgmem_1", user_id="user_1")
    other = membership_data(organization, membership_id="orgmem_2", user_id="user_2")
    deliver(engine, created(data))
    deliver(engine, created(other))

    deleted_at = data["created_at"] + HOUR
    assert deliver(engine, deleted(data, deleted_at)) == "applied"

    assert membership_rows(engine) == [expected_membership(other)]
    assert organization_rows(engine) == [expected_organization(organization)]
    tombstone = tombstone_row(engine, "organization_membership", "orgmem_1")
    assert tombstone == {
        "entity_type": "organization_membership",
        "entity_id": "orgmem_1",
        "organization_id": "org_1",
        "created_at": data["created_at"],
        "deleted_at": deleted_at,
        "reason": "deleted",
    }


def test_delete_applies_the_organization_snapshot(engine: Engine) -> None:
    """The organization ends up the same whichever of its snapshots arrives."""
    organization = organization_data("org_1", name="From the deletion")
    data = membership_data(organization)

    deliver(engine, deleted(data, data["created_at"] + HOUR))

    assert organization_rows(engine) == [expected_organization(organization)]
    assert membership_rows(engine) == []


def test_delete_before_create_and_update_does_not_resurrect(
    engine: Engine, organization: dict[str, Any]
) -> None:
    data = membership_data(organization)
    promoted = changed(data, data["created_at"] + MINUTE, role="org:admin")

    deliver(engine, deleted(promoted, data["created_at"] + HOUR))
    deliver(engine, updated(promoted))
    deliver(engine, created(data))

    assert membership_rows(engine) == []


def test_removed_and_readded_user_keeps_only_the_new_membership(
    engine: Engine, organization: dict[str, Any]
) -> None:
    """Crossed events: the re-add lands first, then every event of the old membership."""
    old = membership_data(organization, membership_id="orgmem_old", user_id="user_1")
    old_promoted = changed(old, old["created_at"] + MINUTE, role="org:admin")
    removed_at = old["created_at"] + HOUR
    new = membership_data(
        organization,
        membership_id="orgmem_new",
        user_id="user_1",
        created_at=removed_at + MINUTE,
    )

    deliver(engine, created(new))
    deliver(engine, updated(old_promoted))
    deliver(engine, created(old))
    deliver(engine, deleted(old_promoted, removed_at))
    deliver(engine, updated(old_promoted))

    assert membership_rows(engine) == [expected_membership(new)]
    tombstone = tombstone_row(engine, "organization_membership", "orgmem_old")
    assert tombstone is not None
    assert tombstone["reason"] == "deleted"
    assert tombstone_row(engine, "organization_membership", "orgmem_new") is None


def test_newer_membership_supersedes_the_stored_one(
    engine: Engine, organization: dict[str, Any]
) -> None:
    """The old membership's deletion is lost or late: the re-add replaces it and buries it."""
    old = membership_data(organization, membership_id="orgmem_old", user_id="user_1")
    new = membership_data(
        organization,
        membership_id="orgmem_new",
        user_id="user_1",
        created_at=old["created_at"] + HOUR,
    )

    deliver(engine, created(old))
    deliver(engine, created(new))

    assert membership_rows(engine) == [expected_membership(new)]
    tombstone = tombstone_row(engine, "organization_membership", "orgmem_old")
    assert tombstone is not None
    assert tombstone["reason"] == "superseded"
    assert tombstone["created_at"] == old["created_at"]

    deliver(engine, updated(changed(old, old["created_at"] + 2 * HOUR, role="org:admin")))
    assert membership_rows(engine) == [expected_membership(new)]

    deliver(engine, deleted(old, old["created_at"] + 30 * MINUTE))
    tombstone = tombstone_row(engine, "organization_membership", "orgmem_old")
    assert tombstone is not None
    assert tombstone["reason"] == "deleted", "an explicit deletion outranks a supersession"
    assert membership_rows(engine) == [expected_membership(new)]


def test_older_membership_arriving_late_is_superseded_at_once(
    engine: Engine, organization: dict[str, Any]
) -> None:
    new = membership_data(
        organization, membership_id="orgmem_new", user_id="user_1", created_at=BASE_TIME_MS + HOUR
    )
    old = membership_data(
        organization, membership_id="orgmem_old", user_id="user_1", created_at=BASE_TIME_MS
    )

    deliver(engine, created(new))
    deliver(engine, created(old))

    assert membership_rows(engine) == [expected_membership(new)]
    tombstone = tombstone_row(engine, "organization_membership", "orgmem_old")
    assert tombstone is not None
    assert tombstone["reason"] == "superseded"


@pytest.mark.parametrize("order", ["a_first", "b_first"])
def test_equal_created_at_is_decided_by_the_larger_id(
    engine: Engine, organization: dict[str, Any], order: str
) -> None:
    a = membership_data(organization, membership_id="orgmem_a", user_id="user_1")
    b = membership_data(organization, membership_id="orgmem_b", user_id="user_1")

    for data in (a, b) if order == "a_first" else (b, a):
        deliver(engine, created(data))

    assert membership_rows(engine) == [expected_membership(b)]


def test_same_user_in_two_organizations_has_two_memberships(engine: Engine) -> None:
    first = membership_data(organization_data("org_1"), user_id="user_1")
    second = membership_data(organization_data("org_2"), user_id="user_1")

    deliver(engine, created(first))
    deliver(engine, created(second))

    assert membership_rows(engine) == sorted(
        [expected_membership(first), expected_membership(second)], key=lambda row: row["id"]
    )


def test_reused_membership_id_with_a_later_created_at_is_a_new_incarnation(
    engine: Engine, organization: dict[str, Any]
) -> None:
    """Should Clerk ever reuse an orgmem id on re-add, the later incarnation lives and the
    earlier one's late events do not touch it."""
    first = membership_data(organization, membership_id="orgmem_1", user_id="user_1")
    second = membership_data(
        organization,
        membership_id="orgmem_1",
        user_id="user_1",
        role="org:admin",
        created_at=first["created_at"] + HOUR,
    )

    deliver(engine, created(first))
    deliver(engine, deleted(first, first["created_at"] + 30 * MINUTE))
    deliver(engine, created(second))
    assert membership_rows(engine) == [expected_membership(second)]

    deliver(engine, deleted(first, first["created_at"] + 30 * MINUTE))
    deliver(engine, updated(changed(first, first["created_at"] + 2 * HOUR, role="org:billing")))
    assert membership_rows(engine) == [expected_membership(second)]

    deliver(engine, deleted(second, second["created_at"] + HOUR))
    deliver(engine, created(first))
    deliver(engine, created(second))
    assert membership_rows(engine) == []


def test_later_incarnation_replaces_an_earlier_one_still_stored(
    engine: Engine, organization: dict[str, Any]
) -> None:
    """Crossed: the re-add (same id, later ``created_at``) arrives while the first incarnation's
    row is still stored, before that incarnation's deletion; it must replace the row."""
    first = membership_data(organization, membership_id="orgmem_1", user_id="user_1")
    first_changed = changed(first, first["created_at"] + 2 * HOUR, role="org:billing")
    second = membership_data(
        organization,
        membership_id="orgmem_1",
        user_id="user_1",
        role="org:admin",
        created_at=first["created_at"] + 3 * HOUR,
    )
    second_promoted = changed(second, second["created_at"] + MINUTE, role="org:member")

    deliver(engine, updated(first_changed))
    deliver(engine, created(second))
    assert membership_rows(engine) == [expected_membership(second)]

    deliver(engine, deleted(first_changed, first["created_at"] + 150 * MINUTE))
    deliver(engine, created(first))
    assert membership_rows(engine) == [expected_membership(second)]

    deliver(engine, updated(second_promoted))
    assert membership_rows(engine) == [expected_membership(second_promoted)]


def test_membership_for_a_deleted_organization_writes_nothing(engine: Engine) -> None:
    organization = organization_data("org_gone")
    deliver(
        engine,
        event("organization.deleted", {"id": "org_gone", "object": "organization"}, BASE_TIME_MS),
    )
    data = membership_data(organization)

    deliver(engine, created(data))
    deliver(engine, deleted(data, BASE_TIME_MS + HOUR))

    assert organization_row(engine, "org_gone") is None
    assert membership_rows(engine) == []
    assert tombstone_row(engine, "organization_membership", data["id"]) is None
