"""organization.created / .updated / .deleted, applied through the worker's real path."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, select

from models.tables import organizations
from tests.factories import (
    BASE_TIME_MS,
    deleted_organization_data,
    event,
    membership_data,
    organization_data,
)
from tests.models.support import (
    deliver,
    expected_organization,
    membership_rows,
    organization_row,
    organization_rows,
    tombstone_row,
)

HOUR = 3_600_000


def test_created_stores_every_column(engine: Engine) -> None:
    data = organization_data(
        "org_created",
        name="Acme",
        slug="acme",
        public_metadata={"convexWorkspaceId": "ws_1", "plan": {"tier": "pro", "seats": 3}},
        created_at=BASE_TIME_MS,
        updated_at=BASE_TIME_MS + 5,
    )
    before = datetime.now(UTC) - timedelta(seconds=1)

    assert deliver(engine, event("organization.created", data)) == "applied"

    assert organization_rows(engine) == [expected_organization(data)]
    assert organization_rows(engine)[0]["workspace_id"] == "ws_1"
    with engine.connect() as connection:
        synced_at = connection.execute(select(organizations.c.synced_at)).scalar_one()
    if synced_at.tzinfo is None:  # SQLite hands back naive UTC
        synced_at = synced_at.replace(tzinfo=UTC)
    assert before <= synced_at <= datetime.now(UTC) + timedelta(seconds=1)


def test_optional_fields_may_be_absent_or_null(engine: Engine) -> None:
    data = organization_data("org_sparse", slug=None, image_url=None, created_by=None)
    del data["max_allowed_memberships"]
    del data["public_metadata"]

    assert deliver(engine, event("organization.created", data)) == "applied"

    row = organization_row(engine, "org_sparse")
    assert row is not None
    assert (row["slug"], row["image_url"], row["created_by"]) == (None, None, None)
    assert row["max_allowed_memberships"] is None
    assert row["public_metadata"] == {}
    assert row["workspace_id"] is None


def test_timestamps_in_seconds_are_stored_as_milliseconds(engine: Engine) -> None:
    data = organization_data("org_seconds", created_at=1_767_225_600, updated_at=1_767_225_601)

    deliver(engine, event("organization.created", data, timestamp=1_767_225_601))

    row = organization_row(engine, "org_seconds")
    assert row is not None
    assert (row["created_at"], row["updated_at"]) == (1_767_225_600_000, 1_767_225_601_000)


def test_update_of_unknown_organization_creates_it(engine: Engine) -> None:
    data = organization_data("org_late", name="Renamed", updated_at=BASE_TIME_MS + HOUR)

    assert deliver(engine, event("organization.updated", data)) == "applied"

    assert organization_rows(engine) == [expected_organization(data)]


def test_newer_update_replaces_every_column(engine: Engine) -> None:
    first = organization_data("org_1", name="Old", slug="old", public_metadata={"a": 1})
    newer = organization_data(
        "org_1",
        name="New",
        slug="new",
        image_url=None,
        max_allowed_memberships=50,
        public_metadata={"convexWorkspaceId": "ws_9"},
        updated_at=BASE_TIME_MS + HOUR,
    )

    deliver(engine, event("organization.created", first))
    deliver(engine, event("organization.updated", newer))

    assert organization_rows(engine) == [expected_organization(newer)]


def test_stale_update_is_ignored(engine: Engine) -> None:
    newer = organization_data("org_1", name="Newer", updated_at=BASE_TIME_MS + 2 * HOUR)
    older = organization_data("org_1", name="Older", updated_at=BASE_TIME_MS + HOUR)

    deliver(engine, event("organization.updated", newer))
    assert deliver(engine, event("organization.updated", older)) == "applied"

    assert organization_rows(engine) == [expected_organization(newer)]


def test_update_with_the_same_updated_at_is_ignored(engine: Engine) -> None:
    """Only a strictly newer ``updated_at`` writes: equal versions keep the stored row."""
    stored = organization_data("org_1", name="First", updated_at=BASE_TIME_MS + HOUR)
    same_version = organization_data("org_1", name="Second", updated_at=BASE_TIME_MS + HOUR)

    deliver(engine, event("organization.updated", stored))
    deliver(engine, event("organization.updated", same_version))

    assert organization_rows(engine) == [expected_organization(stored)]


def test_update_before_create_keeps_the_update(engine: Engine) -> None:
    created = organization_data("org_1", name="Original")
    updated = organization_data("org_1", name="Renamed", updated_at=BASE_TIME_MS + HOUR)

    deliver(engine, event("organization.updated", updated))
    deliver(engine, event("organization.created", created))

    assert organization_rows(engine) == [expected_organization(updated)]


def test_delete_removes_organization_and_members_and_tombstones_it(engine: Engine) -> None:
    doomed = organization_data("org_doomed")
    kept = organization_data("org_kept")
    for user in ("user_1", "user_2"):
        deliver(
            engine, event("organizationMembership.created", membership_data(doomed, user_id=user))
        )
    survivor = membership_data(kept, user_id="user_1")
    deliver(engine, event("organizationMembership.created", survivor))
    assert len(membership_rows(engine)) == 3

    deleted_at = BASE_TIME_MS + 3 * HOUR
    status = deliver(
        engine,
        event("organization.deleted", deleted_organization_data("org_doomed"), deleted_at),
    )

    assert status == "applied"
    assert [row["id"] for row in organization_rows(engine)] == ["org_kept"]
    assert [row["id"] for row in membership_rows(engine)] == [survivor["id"]]
    tombstone = tombstone_row(engine, "organization", "org_doomed")
    assert tombstone is not None
    assert tombstone["organization_id"] == "org_doomed"
    assert tombstone["created_at"] is None
    assert tombstone["deleted_at"] == deleted_at
    assert tombstone["reason"] == "deleted"


def test_delete_with_envelope_time_in_seconds_records_milliseconds(engine: Engine) -> None:
    deliver(
        engine, event("organization.deleted", deleted_organization_data("org_1"), 1_767_232_800)
    )

    tombstone = tombstone_row(engine, "organization", "org_1")
    assert tombstone is not None
    assert tombstone["deleted_at"] == 1_767_232_800_000


def test_delete_of_unknown_organization_still_blocks_it(engine: Engine) -> None:
    deleted = deleted_organization_data("org_never_seen", slug=None)

    assert deliver(engine, event("organization.deleted", deleted, BASE_TIME_MS)) == "applied"
    deliver(engine, event("organization.created", organization_data("org_never_seen")))

    assert organization_rows(engine) == []
    assert tombstone_row(engine, "organization", "org_never_seen") is not None


def test_delete_before_update_does_not_resurrect(engine: Engine) -> None:
    """Late create/update events never bring a deleted organization back, not even ones whose
    ``updated_at`` is after the deletion (clocks differ; Clerk never reuses organization ids)."""
    deleted_at = BASE_TIME_MS + 2 * HOUR
    deliver(engine, event("organization.deleted", deleted_organization_data("org_1"), deleted_at))

    for event_type, updated_at in (
        ("organization.created", BASE_TIME_MS),
        ("organization.updated", BASE_TIME_MS + HOUR),
        ("organization.updated", deleted_at + HOUR),
    ):
        data = organization_data("org_1", updated_at=updated_at)
        assert deliver(engine, event(event_type, data)) == "applied"

    assert organization_rows(engine) == []


def test_delete_twice_keeps_the_earliest_deletion_time(engine: Engine) -> None:
    deleted = deleted_organization_data("org_1")
    deliver(engine, event("organization.deleted", deleted, BASE_TIME_MS + 2 * HOUR))
    deliver(engine, event("organization.deleted", deleted, BASE_TIME_MS + HOUR))
    deliver(engine, event("organization.deleted", deleted, BASE_TIME_MS + 3 * HOUR))

    tombstone = tombstone_row(engine, "organization", "org_1")
    assert tombstone is not None
    assert tombstone["deleted_at"] == BASE_TIME_MS + HOUR


def test_deleted_organization_blocks_late_membership_events(engine: Engine) -> None:
    organization = organization_data("org_1")
    member = membership_data(organization, user_id="user_1")
    deliver(engine, event("organizationMembership.created", member))
    deliver(
        engine,
        event("organization.deleted", deleted_organization_data("org_1"), BASE_TIME_MS + HOUR),
    )

    newer_organization = organization_data("org_1", name="Later", updated_at=BASE_TIME_MS + HOUR)
    late = [
        event("organizationMembership.created", membership_data(newer_organization)),
        event(
            "organizationMembership.updated",
            dict(member, role="org:admin", updated_at=BASE_TIME_MS + 2 * HOUR),
        ),
        event("organizationMembership.deleted", member, BASE_TIME_MS + 2 * HOUR),
    ]
    for payload in late:
        assert deliver(engine, payload) == "applied"

    assert organization_rows(engine) == []
    assert membership_rows(engine) == []


def test_workspace_id_comes_from_the_default_key(engine: Engine) -> None:
    with_workspace = organization_data(
        "org_ws", public_metadata={"convexWorkspaceId": "ws_abc", "workspaceId": "other"}
    )
    without = organization_data("org_none", public_metadata={"workspaceId": "other"})
    empty = organization_data("org_empty", public_metadata={"convexWorkspaceId": ""})
    numeric = organization_data("org_number", public_metadata={"convexWorkspaceId": 42})

    for data in (with_workspace, without, empty, numeric):
        deliver(engine, event("organization.created", data))

    workspaces = {row["id"]: row["workspace_id"] for row in organization_rows(engine)}
    assert workspaces == {
        "org_ws": "ws_abc",
        "org_none": None,
        "org_empty": None,
        "org_number": "42",
    }


def test_workspace_id_of_a_value_that_is_no_string_is_its_json_text(engine: Engine) -> None:
    """Not Python's ``str()``: ``True`` is ``true``, an object is compact JSON (sorted keys),
    so an application can parse what it reads."""
    values = {
        "org_true": (True, "true"),
        "org_false": (False, "false"),
        "org_float": (1.5, "1.5"),
        "org_dict": ({"b": [1, None], "a": "ü"}, '{"a":"ü","b":[1,null]}'),
        "org_list": (["x", 2], '["x",2]'),
    }
    for organization_id, (value, _) in values.items():
        data = organization_data(organization_id, public_metadata={"convexWorkspaceId": value})
        deliver(engine, event("organization.created", data))

    workspaces = {row["id"]: row["workspace_id"] for row in organization_rows(engine)}
    assert workspaces == {key: text for key, (_, text) in values.items()}
    assert json.loads(workspaces["org_dict"]) == {"b": [1, None], "a": "ü"}


def test_workspace_id_follows_a_custom_key(engine: Engine) -> None:
    data = organization_data(
        "org_1", public_metadata={"convexWorkspaceId": "ws_default", "tenant": "ws_custom"}
    )
    member = membership_data(
        organization_data("org_2", public_metadata={"tenant": "ws_from_snapshot"})
    )

    deliver(engine, event("organization.created", data), workspace_key="tenant")
    deliver(engine, event("organizationMembership.created", member), workspace_key="tenant")

    workspaces = {row["id"]: row["workspace_id"] for row in organization_rows(engine)}
    assert workspaces == {"org_1": "ws_custom", "org_2": "ws_from_snapshot"}


def test_workspace_id_changes_and_clears_with_updates(engine: Engine) -> None:
    versions = [
        ({"convexWorkspaceId": "ws_1"}, "ws_1"),
        ({"convexWorkspaceId": "ws_2"}, "ws_2"),
        ({}, None),
    ]
    for offset, (metadata, workspace) in enumerate(versions):
        data = organization_data(
            "org_1", public_metadata=metadata, updated_at=BASE_TIME_MS + offset
        )
        deliver(engine, event("organization.updated", data))
        row = organization_row(engine, "org_1")
        assert row is not None
        assert row["workspace_id"] == workspace


def test_slug_is_not_unique(engine: Engine) -> None:
    """Two live organizations may share a slug (one deleted, its slug reused; or Clerk's slug
    settings off): both must be stored."""
    first = organization_data("org_1", slug="shared")
    second = organization_data("org_2", slug="shared")

    assert deliver(engine, event("organization.created", first)) == "applied"
    assert deliver(engine, event("organization.created", second)) == "applied"

    assert organization_rows(engine) == [
        expected_organization(first),
        expected_organization(second),
    ]
