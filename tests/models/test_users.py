"""user.created / .updated / .deleted, applied through the worker's real path; and the per-user
lock that keeps a deleted user's memberships deleted when events race on PostgreSQL."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlalchemy import Engine

from tests.factories import (
    BASE_TIME_MS,
    deleted_user_data,
    email_address_data,
    event,
    membership_data,
    new_svix_id,
    organization_data,
    user_data,
)
from tests.models.support import (
    WORKSPACE_KEY,
    assert_dead_letter,
    deliver,
    expected_organization,
    expected_user,
    membership_rows,
    organization_rows,
    tombstone_row,
    user_row,
    user_rows,
)
from workers.processing import apply_with_short_retries, describe_event

HOUR = 3_600_000
DELETED_AT = BASE_TIME_MS + 10 * HOUR


def created(data: dict[str, Any]) -> dict[str, Any]:
    return event("user.created", data)


def updated(data: dict[str, Any]) -> dict[str, Any]:
    return event("user.updated", data)


def deleted(user_id: str, at: int = DELETED_AT, **extra: Any) -> dict[str, Any]:
    return event("user.deleted", deleted_user_data(user_id, **extra), timestamp=at)


def changed(data: dict[str, Any], at: int, **changes: Any) -> dict[str, Any]:
    return {**data, **changes, "updated_at": at}


def member(organization_id: str, user_id: str, **overrides: Any) -> dict[str, Any]:
    return event(
        "organizationMembership.created",
        membership_data(organization_data(organization_id), user_id=user_id, **overrides),
    )


def test_created_stores_every_column(engine: Engine) -> None:
    data = user_data(
        "user_1",
        username="jane",
        email="jane@example.com",
        external_id="ext-1",
        public_metadata={"plan": "pro"},
    )

    assert deliver(engine, created(data)) == "applied"

    assert user_rows(engine) == [
        {
            "id": "user_1",
            "primary_email_address": "jane@example.com",
            "username": "jane",
            "first_name": "Jane",
            "last_name": "Tester",
            "image_url": data["image_url"],
            "external_id": "ext-1",
            "public_metadata": {"plan": "pro"},
            "created_at": BASE_TIME_MS,
            "updated_at": BASE_TIME_MS,
        }
    ]
    assert data["email_addresses"][0]["email_address"] != "jane@example.com", (
        "the primary address is not the first one: it is found by primary_email_address_id"
    )


@pytest.mark.parametrize(
    "change",
    [
        {"email_addresses": []},
        {"primary_email_address_id": None},
        {"primary_email_address_id": "idn_elsewhere"},
        {"email_addresses": "not a list"},
    ],
)
def test_primary_email_is_null_when_not_found(engine: Engine, change: dict[str, Any]) -> None:
    data = {**user_data("user_1"), **change}

    assert deliver(engine, created(data)) == "applied"

    row = user_row(engine, "user_1")
    assert row is not None
    assert row["primary_email_address"] is None


def test_optional_fields_may_be_absent_or_null(engine: Engine) -> None:
    data = {
        "object": "user",
        "id": "user_1",
        "first_name": None,
        "created_at": BASE_TIME_MS // 1000,
        "updated_at": BASE_TIME_MS // 1000,
    }

    assert deliver(engine, created(data)) == "applied"

    assert user_rows(engine) == [
        {
            "id": "user_1",
            "primary_email_address": None,
            "username": None,
            "first_name": None,
            "last_name": None,
            "image_url": None,
            "external_id": None,
            "public_metadata": {},
            "created_at": BASE_TIME_MS,
            "updated_at": BASE_TIME_MS,
        }
    ]


def test_update_of_unknown_user_creates_it(engine: Engine) -> None:
    data = user_data("user_1", updated_at=BASE_TIME_MS + HOUR)

    assert deliver(engine, updated(data)) == "applied"

    assert user_rows(engine) == [expected_user(data)]


def test_newer_update_wins_and_stale_or_equal_ones_are_ignored(engine: Engine) -> None:
    data = user_data("user_1")
    newer = changed(
        data,
        BASE_TIME_MS + 2 * HOUR,
        first_name="Janet",
        email_addresses=[email_address_data("idn_new", "janet@example.com")],
        primary_email_address_id="idn_new",
    )
    older = changed(data, BASE_TIME_MS + HOUR, first_name="Stale")
    same_version = changed(newer, newer["updated_at"], first_name="Same version")

    for payload in (created(data), updated(newer), updated(older), updated(same_version)):
        assert deliver(engine, payload) == "applied"

    assert user_rows(engine) == [expected_user(newer)]
    assert user_rows(engine)[0]["primary_email_address"] == "janet@example.com"


def test_delete_removes_the_user_and_its_memberships_everywhere(engine: Engine) -> None:
    deliver(engine, created(user_data("user_1")))
    deliver(engine, created(user_data("user_2")))
    for organization_id in ("org_1", "org_2"):
        deliver(engine, member(organization_id, "user_1"))
        deliver(engine, member(organization_id, "user_2"))

    assert deliver(engine, deleted("user_1", external_id="ext-1")) == "applied"

    assert [row["id"] for row in user_rows(engine)] == ["user_2"]
    assert {row["user_id"] for row in membership_rows(engine)} == {"user_2"}
    assert len(membership_rows(engine)) == 2
    assert [row["id"] for row in organization_rows(engine)] == ["org_1", "org_2"]
    tombstone = tombstone_row(engine, "user", "user_1")
    assert tombstone is not None
    assert (tombstone["deleted_at"], tombstone["reason"]) == (DELETED_AT, "deleted")


def test_deleted_user_stays_deleted_whatever_arrives_later(engine: Engine) -> None:
    data = user_data("user_1")
    organization = organization_data("org_1", name="Renamed", updated_at=BASE_TIME_MS + HOUR)

    deliver(engine, deleted("user_1"))
    for payload in (
        created(data),
        updated(changed(data, DELETED_AT + HOUR, first_name="After")),
        event(
            "organizationMembership.created",
            membership_data(organization, user_id="user_1"),
        ),
        event(
            "organizationMembership.updated",
            membership_data(organization, user_id="user_1", updated_at=DELETED_AT + HOUR),
        ),
    ):
        assert deliver(engine, payload) == "applied"

    assert user_rows(engine) == []
    assert membership_rows(engine) == []
    # The organization snapshot a late membership event carries is still applied, as for any
    # other membership event: the organization row must not depend on delivery order.
    assert organization_rows(engine) == [expected_organization(organization)]


def test_deleting_an_unknown_user_still_blocks_it(engine: Engine) -> None:
    deliver(engine, deleted("user_1", at=BASE_TIME_MS // 1000))

    tombstone = tombstone_row(engine, "user", "user_1")
    assert tombstone is not None
    assert tombstone["deleted_at"] == BASE_TIME_MS
    deliver(engine, created(user_data("user_1")))
    assert user_rows(engine) == []


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (event("user.created", {**user_data(), "id": None}), "data.id"),
        (event("user.created", {**user_data(), "created_at": "yesterday"}), "data.created_at"),
        (event("user.updated", {"id": "user_1", "object": "user"}), "data.created_at"),
        (event("user.deleted", {"object": "user", "deleted": True}), "data.id"),
    ],
)
def test_payloads_without_what_a_mutation_needs_are_dead_letters(
    engine: Engine, payload: dict[str, Any], error: str
) -> None:
    assert_dead_letter(engine, payload, error)
    assert user_rows(engine) == []


def test_user_deleted_without_envelope_time_is_a_dead_letter(engine: Engine) -> None:
    payload = deleted("user_1")
    del payload["timestamp"]

    assert deliver(engine, payload) == "dead"
    assert tombstone_row(engine, "user", "user_1") is None


def apply_at_once(engine: Engine, payloads: list[dict[str, Any]]) -> list[str]:
    """Apply every payload from its own thread, all released together."""
    from tests.factories import body_of

    start = threading.Barrier(len(payloads))

    def apply(payload: dict[str, Any]) -> str:
        incoming = describe_event(new_svix_id(), body_of(payload), BASE_TIME_MS)
        start.wait(timeout=30)
        return str(apply_with_short_retries(engine, incoming, WORKSPACE_KEY))

    with ThreadPoolExecutor(max_workers=len(payloads)) as pool:
        return list(pool.map(apply, payloads))


@pytest.mark.slow
def test_racing_user_deletion_never_leaves_a_membership_behind(pg_engine: Engine) -> None:
    """``user.deleted`` and membership events for the same user, applied at the same moment
    from several connections: whichever commits first, no membership of the deleted user may
    survive. Without the per-user lock, a membership insert that checked for the user's
    tombstone before the deletion committed lands after it, and stays."""
    organizations = [f"org_{n}" for n in range(6)]
    for organization_id in organizations:
        deliver(pg_engine, event("organization.created", organization_data(organization_id)))
    for round_number in range(15):
        user_id = f"user_race_{round_number}"
        payloads = [member(organization_id, user_id) for organization_id in organizations]
        payloads.insert(round_number % len(payloads), deleted(user_id))

        assert set(apply_at_once(pg_engine, payloads)) == {"applied"}

        assert [row for row in membership_rows(pg_engine) if row["user_id"] == user_id] == []
        assert tombstone_row(pg_engine, "user", user_id) is not None


def test_upserts_report_whether_they_wrote(engine: Engine) -> None:
    """``upsert_*`` return whether the row was written (reconcile counts on it), on both
    dialects: created, then not for the same version, then again for a newer one."""
    from models.memberships import upsert_membership
    from models.organizations import upsert_organization
    from models.unit_of_work import UnitOfWork
    from models.users import upsert_user
    from workers.handlers.memberships import membership_snapshot
    from workers.handlers.payloads import organization_snapshot
    from workers.handlers.users import user_snapshot

    organization = organization_data("org_1")
    later = BASE_TIME_MS + HOUR
    cases = [
        (upsert_organization, organization_snapshot, organization),
        (upsert_user, lambda data, _key: user_snapshot(data), user_data("user_1")),
        (upsert_membership, membership_snapshot, membership_data(organization, user_id="user_1")),
    ]
    for upsert, snapshot, data in cases:
        newer = {**data, "updated_at": later}
        written = []
        for version in (data, data, newer, data):
            with engine.begin() as connection:
                written.append(upsert(UnitOfWork(connection), snapshot(version, WORKSPACE_KEY)))
        assert written == [True, False, True, False], upsert.__name__
