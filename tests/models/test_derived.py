"""A membership's profile columns follow its member's ``users`` row, whatever order the user and
membership events come in (``models.derived``): ``identifier`` is the user's primary email
address, else username, else what the membership event said; without a users row, the event's
own ``public_user_data``."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine

from models.tables import organization_memberships
from tests.factories import (
    BASE_TIME_MS,
    event,
    membership_data,
    organization_data,
    user_data,
)
from tests.models.support import deliver, membership_row, membership_rows, rows

HOUR = 3_600_000


def member(organization_id: str, **overrides: Any) -> dict[str, Any]:
    return event(
        "organizationMembership.created",
        membership_data(
            organization_data(organization_id),
            membership_id=f"orgmem_{organization_id}",
            user_id="user_1",
            first_name="Listed",
            identifier="+15550100",
            **overrides,
        ),
    )


def user(**overrides: Any) -> dict[str, Any]:
    return user_data("user_1", **{"first_name": "Jane", "last_name": "Row", **overrides})


def profiles(engine: Engine) -> list[tuple[Any, ...]]:
    return [
        (row["id"], row["identifier"], row["first_name"], row["last_name"], row["image_url"])
        for row in membership_rows(engine)
    ]


def test_without_a_users_row_the_event_says(engine: Engine) -> None:
    deliver(engine, member("org_1"))

    row = membership_row(engine, "orgmem_org_1")
    assert row is not None
    assert (row["identifier"], row["first_name"], row["listed_identifier"]) == (
        "+15550100",
        "Listed",
        "+15550100",
    )


@pytest.mark.parametrize("user_first", [True, False])
def test_the_users_row_gives_the_profile_in_either_order(engine: Engine, user_first: bool) -> None:
    events = [event("user.created", user()), member("org_1"), member("org_2")]
    for payload in events if user_first else reversed(events):
        assert deliver(engine, payload) == "applied"

    image = user()["image_url"]
    assert profiles(engine) == [
        ("orgmem_org_1", "jane.tester@example.com", "Jane", "Row", image),
        ("orgmem_org_2", "jane.tester@example.com", "Jane", "Row", image),
    ]


def test_identifier_falls_back_to_username_then_to_what_the_event_said(engine: Engine) -> None:
    deliver(engine, member("org_1"))
    deliver(engine, event("user.created", user(email=None, username="jane")))
    assert [row["identifier"] for row in membership_rows(engine)] == ["jane"]

    deliver(engine, event("user.updated", user(email=None, updated_at=BASE_TIME_MS + HOUR)))
    assert [row["identifier"] for row in membership_rows(engine)] == ["+15550100"]


def test_a_user_update_reaches_every_membership_and_a_stale_one_none(engine: Engine) -> None:
    deliver(engine, event("user.created", user()))
    deliver(engine, member("org_1"))
    deliver(engine, member("org_2"))

    renamed = user(first_name="Janet", email="janet@example.com", updated_at=BASE_TIME_MS + HOUR)
    deliver(engine, event("user.updated", renamed))
    assert {(row[1], row[2]) for row in profiles(engine)} == {("janet@example.com", "Janet")}

    before = rows(engine, organization_memberships, without=())  # synced_at too
    deliver(engine, event("user.updated", user(first_name="Stale")))
    deliver(engine, event("user.updated", renamed))  # again: nothing to change
    assert rows(engine, organization_memberships, without=()) == before


def test_a_newer_membership_event_keeps_the_users_profile(engine: Engine) -> None:
    deliver(engine, event("user.created", user()))
    deliver(engine, member("org_1"))

    deliver(engine, member("org_1", role="org:admin", updated_at=BASE_TIME_MS + 2 * HOUR))

    row = membership_row(engine, "orgmem_org_1")
    assert row is not None
    assert (row["role"], row["first_name"], row["listed_identifier"]) == (
        "org:admin",
        "Jane",
        "+15550100",
    )
