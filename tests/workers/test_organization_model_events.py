"""What the worker reads of role, permission, invitation and domain events besides applying
them: the organization and user each concerns (inbox columns), the locks a batch takes up
front for them, and the erasure of an invitation accepted by a deleted user (which rebuilds
the same tables)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select, update

from clerk_sync.core.settings import Settings
from models.locks import EXCLUSIVE, ROLES_KEY, SHARED, lock_roles
from models.tables import webhook_events
from tests.factories import (
    body_of,
    deleted_object_data,
    deleted_user_data,
    domain_data,
    event,
    invitation_data,
    membership_data,
    new_svix_id,
    organization_data,
    permission_data,
    role_data,
    user_data,
)
from tests.models.organization_history import model_tables
from tests.models.support import RECEIVED_AT_MS, WORKSPACE_KEY, deliver, synced_tables
from workers.erasure import erase_requested
from workers.handlers import Targets
from workers.processing import apply_batch, describe_event
from workers.rebuild import rebuild

ACME = organization_data("org_1")
OWNER = user_data("user_owner", first_name="Alex", last_name="Owner", email="alex@example.com")


def accepted(**overrides: Any) -> dict[str, Any]:
    return event(
        "organizationInvitation.accepted",
        invitation_data(
            "org_1",
            invitation_id="orginv_1",
            email="jane.tester@example.com",
            inviter=OWNER,
            status="accepted",
            accepted_by="user_jane",
            **overrides,
        ),
    )


def test_the_inbox_names_the_organization_and_the_user_of_each_event() -> None:
    cases = [
        (accepted(), "org_1", "user_jane"),
        (event("organizationInvitation.created", invitation_data("org_1")), "org_1", None),
        (event("organizationDomain.created", domain_data(ACME)), "org_1", None),
        (
            event("organizationDomain.deleted", deleted_object_data("organization_domain", "d")),
            None,
            None,
        ),
        (event("role.created", role_data("role_1")), None, None),
        (event("permission.created", permission_data("perm_1")), None, None),
    ]
    for payload, organization_id, user_id in cases:
        described = describe_event(new_svix_id(), body_of(payload), RECEIVED_AT_MS)
        assert (described.organization_id, described.user_id) == (organization_id, user_id)


def test_a_batch_takes_the_roles_lock_in_the_mode_its_events_need() -> None:
    member = event("organizationMembership.created", membership_data(ACME, user_id="user_1"))
    role = event("role.updated", role_data("role_1", permissions=[permission_data("perm_1")]))
    domain = event("organizationDomain.updated", domain_data(ACME, domain_id="orgdmn_1"))

    assert Targets.of(member).roles == SHARED
    assert Targets.of(role).roles == EXCLUSIVE
    assert ("permission", "perm_1") in Targets.of(role).tombstones
    assert ROLES_KEY in Targets.of(role).lock_keys()
    assert Targets.of(domain).lock_keys() >= {"organization:org_1", "organization_domain:orgdmn_1"}
    removal = event("organizationMembership.deleted", membership_data(ACME, user_id="user_1"))
    assert Targets.of(removal).roles is None, "a deletion reads no role"

    batch = Targets()
    for payload in (member, role, domain):
        batch.merge(Targets.of(payload))
    assert batch.roles == EXCLUSIVE


def test_an_invitation_accepted_by_a_deleted_user_is_erased_and_rebuilds_alike(
    engine: Engine,
) -> None:
    deliver(engine, event("organization.created", ACME))
    created = new_svix_id()
    invitation = invitation_data(
        "org_1", invitation_id="orginv_1", email="jane.tester@example.com", inviter=OWNER
    )
    deliver(engine, event("organizationInvitation.created", invitation), svix_id=created)
    accepted_id = new_svix_id()
    deliver(engine, accepted(updated_at=invitation["updated_at"] + 1), svix_id=accepted_id)

    deliver(engine, event("user.deleted", deleted_user_data("user_jane")))
    assert erase_requested(engine) == 1

    payload = stored_payload(engine, accepted_id)
    assert "jane.tester@example.com" not in payload
    assert "Alex" not in payload
    assert "Owner" not in payload
    assert "orginv_1" in payload
    assert "user_jane" in payload
    assert model_tables(engine)[2][0]["email_address"] is None
    tables = (synced_tables(engine), model_tables(engine))

    with engine.begin() as connection:  # the events as stored, erased: and the tables lost
        connection.execute(update(webhook_events).values(processed_at=None))
    settings = Settings(
        database_url=engine.url.render_as_string(hide_password=False),
        workspace_metadata_key=WORKSPACE_KEY,
    )
    result = rebuild(settings, engine, batch_size=2)

    assert result.failures == []
    assert (synced_tables(engine), model_tables(engine)) == tables


def stored_payload(engine: Engine, svix_id: str) -> str:
    with engine.connect() as connection:
        return str(
            connection.execute(
                select(webhook_events.c.payload).where(webhook_events.c.svix_id == svix_id)
            ).scalar_one()
        )


def test_a_batch_that_cannot_wait_defers_only_what_needs_the_roles_lock_held_elsewhere(
    pg_engine: Engine,
) -> None:
    """Without waiting: another transaction reading roles (shared) holds back only the role
    writers of a batch, its membership upserts go ahead; one writing roles (exclusive) holds
    back both."""
    member = event("organizationMembership.created", membership_data(ACME, user_id="user_1"))
    role = event("role.created", role_data("role_1"))
    payloads = {"member": member, "role": role}

    def apply_while_held(mode: str) -> dict[str, str]:
        events = {
            name: describe_event(new_svix_id(), body_of(payload), RECEIVED_AT_MS)
            for name, payload in payloads.items()
        }
        with pg_engine.begin() as other:
            lock_roles(other, mode)
            results = apply_batch(
                pg_engine, list(events.values()), WORKSPACE_KEY, wait_for_locks=False
            )
        return {name: results[incoming.svix_id].status for name, incoming in events.items()}

    assert apply_while_held(SHARED) == {"member": "applied", "role": "deferred"}
    assert apply_while_held(EXCLUSIVE) == {"member": "deferred", "role": "deferred"}
