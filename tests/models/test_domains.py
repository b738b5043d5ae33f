"""organizationDomain.created / .updated / .deleted, applied through the worker's real path:
versioned, tombstoned (a deletion names no organization: the stored row does), create-on-update,
deleted with a deleted organization."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine

from models.tables import organization_domains
from tests.factories import (
    BASE_TIME_MS,
    deleted_object_data,
    deleted_organization_data,
    domain_data,
    event,
    organization_data,
    verification_data,
)
from tests.models.support import assert_dead_letter, deliver, rows, tombstone_row

HOUR = 3_600_000
DELETED_AT = BASE_TIME_MS + 10 * HOUR
ACME = organization_data("org_1")


def domain(**overrides: Any) -> dict[str, Any]:
    return domain_data(ACME, domain_id="orgdmn_1", **overrides)


def deleted(at: int = DELETED_AT) -> dict[str, Any]:
    return event(
        "organizationDomain.deleted", deleted_object_data("organization_domain", "orgdmn_1"), at
    )


def domain_rows(engine: Engine) -> list[dict[str, Any]]:
    return rows(engine, organization_domains)


def test_created_stores_every_column(engine: Engine) -> None:
    data = domain(ownership=verification_data("unverified", "dns"), with_organization=True)

    assert deliver(engine, event("organizationDomain.created", data)) == "applied"

    assert domain_rows(engine) == [
        {
            "id": "orgdmn_1",
            "organization_id": "org_1",
            "name": "example.com",
            "enrollment_mode": "automatic_invitation",
            "verification_status": "verified",
            "ownership_verification_status": "unverified",
            "affiliation_email_address": "admin@example.com",
            "total_pending_invitations": 0,
            "total_pending_suggestions": 0,
            "created_at": BASE_TIME_MS,
            "updated_at": BASE_TIME_MS,
        }
    ]


def test_verification_status_falls_back_to_the_deprecated_verification(engine: Engine) -> None:
    data = domain(verification=verification_data("failed"))
    del data["affiliation_verification"]
    deliver(engine, event("organizationDomain.created", data))
    newer = domain(affiliation_verification=None, verification=None, updated_at=BASE_TIME_MS + HOUR)
    older_rows = domain_rows(engine)

    deliver(engine, event("organizationDomain.updated", newer))

    assert [row["verification_status"] for row in older_rows] == ["failed"]
    assert [row["verification_status"] for row in domain_rows(engine)] == [None]


def test_newer_update_wins_and_stale_or_equal_ones_are_ignored(engine: Engine) -> None:
    later = BASE_TIME_MS + HOUR
    newest = domain(enrollment_mode="automatic_suggestion", updated_at=later)
    assert deliver(engine, event("organizationDomain.updated", newest)) == "applied"
    deliver(engine, event("organizationDomain.created", domain()))
    deliver(engine, event("organizationDomain.updated", domain(updated_at=later)))

    assert [row["enrollment_mode"] for row in domain_rows(engine)] == ["automatic_suggestion"]


def test_deleted_domain_stays_deleted_and_its_tombstone_names_its_organization(
    engine: Engine,
) -> None:
    deliver(engine, event("organizationDomain.created", domain()))

    assert deliver(engine, deleted()) == "applied"
    deliver(engine, event("organizationDomain.updated", domain(updated_at=DELETED_AT + HOUR)))

    assert domain_rows(engine) == []
    tombstone = tombstone_row(engine, "organization_domain", "orgdmn_1")
    assert tombstone is not None
    assert (tombstone["organization_id"], tombstone["deleted_at"]) == ("org_1", DELETED_AT)


def test_deleting_an_unknown_domain_still_blocks_it(engine: Engine) -> None:
    assert deliver(engine, deleted()) == "applied"
    assert deliver(engine, event("organizationDomain.created", domain())) == "applied"

    assert domain_rows(engine) == []
    tombstone = tombstone_row(engine, "organization_domain", "orgdmn_1")
    assert tombstone is not None
    assert tombstone["organization_id"] is None


def test_a_deleted_organization_takes_its_domains_and_refuses_late_ones(engine: Engine) -> None:
    deliver(engine, event("organizationDomain.created", domain()))

    deliver(engine, event("organization.deleted", deleted_organization_data("org_1"), DELETED_AT))
    deliver(engine, event("organizationDomain.updated", domain(updated_at=DELETED_AT + HOUR)))

    assert domain_rows(engine) == []


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        (event("organizationDomain.created", {**domain(), "name": None}), "data.name"),
        (event("organizationDomain.updated", {**domain(), "updated_at": "now"}), "data.updated_at"),
        (event("organizationDomain.deleted", {"object": "organization_domain"}), "data.id"),
    ],
)
def test_payloads_without_what_a_mutation_needs_are_dead_letters(
    engine: Engine, payload: dict[str, Any], error: str
) -> None:
    assert_dead_letter(engine, payload, error)
    assert domain_rows(engine) == []
