"""organizationInvitation.created / .accepted / .revoked, applied through the worker's real
path: one versioned upsert (a late ``created`` never reopens an accepted or revoked
invitation), refused and deleted with a deleted organization, and without an email address
once the user who accepted it is deleted."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine

from models.tables import organization_invitations
from tests.factories import (
    BASE_TIME_MS,
    deleted_organization_data,
    deleted_user_data,
    event,
    invitation_data,
    organization_data,
    user_data,
)
from tests.models.support import assert_dead_letter, deliver, rows

HOUR = 3_600_000
OWNER = user_data("user_owner", first_name="Alex", last_name="Owner", email="alex@example.com")


def invitation(**overrides: Any) -> dict[str, Any]:
    return invitation_data("org_1", invitation_id="orginv_1", inviter=OWNER, **overrides)


def accepted() -> dict[str, Any]:
    return event(
        "organizationInvitation.accepted",
        invitation(status="accepted", accepted_by="user_1", updated_at=BASE_TIME_MS + HOUR),
    )


def invitation_rows(engine: Engine) -> list[dict[str, Any]]:
    return rows(engine, organization_invitations)


def test_created_stores_every_column(engine: Engine) -> None:
    data = invitation(public_metadata={"team": "red"})

    assert deliver(engine, event("organizationInvitation.created", data)) == "applied"

    assert invitation_rows(engine) == [
        {
            "id": "orginv_1",
            "organization_id": "org_1",
            "email_address": "jane.tester@example.com",
            "role": "org:member",
            "role_name": "Member",
            "status": "pending",
            "public_metadata": {"team": "red"},
            "url": data["url"],
            "inviter_id": "user_owner",
            "user_id": None,
            "expires_at": data["expires_at"],
            "created_at": BASE_TIME_MS,
            "updated_at": BASE_TIME_MS,
        }
    ]


@pytest.mark.parametrize("accepted_first", [True, False])
def test_acceptance_ends_it_whatever_the_order(engine: Engine, accepted_first: bool) -> None:
    events = [event("organizationInvitation.created", invitation()), accepted()]
    for payload in reversed(events) if accepted_first else events:
        assert deliver(engine, payload) == "applied"

    assert [(row["status"], row["user_id"]) for row in invitation_rows(engine)] == [
        ("accepted", "user_1")
    ]


def test_status_is_what_the_event_says_when_the_payload_omits_it(engine: Engine) -> None:
    data = invitation(updated_at=BASE_TIME_MS + HOUR)
    del data["status"]

    deliver(engine, event("organizationInvitation.revoked", data))

    assert [row["status"] for row in invitation_rows(engine)] == ["revoked"]


def test_a_deleted_organization_takes_its_invitations_and_refuses_late_ones(
    engine: Engine,
) -> None:
    deliver(engine, event("organizationInvitation.created", invitation()))
    deliver(engine, event("organization.created", organization_data("org_1")))

    deliver(
        engine,
        event("organization.deleted", deleted_organization_data("org_1"), BASE_TIME_MS + HOUR),
    )
    deliver(engine, accepted())

    assert invitation_rows(engine) == []


@pytest.mark.parametrize("deleted_first", [True, False])
def test_an_invitation_accepted_by_a_deleted_user_keeps_no_email(
    engine: Engine, deleted_first: bool
) -> None:
    deletion = event("user.deleted", deleted_user_data("user_1"), BASE_TIME_MS + 2 * HOUR)
    events = [event("organizationInvitation.created", invitation()), accepted(), deletion]
    for payload in [deletion, *events[:2]] if deleted_first else events:
        assert deliver(engine, payload) == "applied"

    assert [(row["status"], row["email_address"]) for row in invitation_rows(engine)] == [
        ("accepted", None)
    ]


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (event("organizationInvitation.created", {**invitation(), "role": 7}), "data.role"),
        (
            event("organizationInvitation.created", {**invitation(), "organization_id": None}),
            "data.organization_id",
        ),
        (event("organizationInvitation.accepted", {"id": "orginv_1"}), "data.organization_id"),
    ],
)
def test_payloads_without_what_a_mutation_needs_are_dead_letters(
    engine: Engine, payload: dict[str, Any], error: str
) -> None:
    assert_dead_letter(engine, payload, error)
    assert invitation_rows(engine) == []
