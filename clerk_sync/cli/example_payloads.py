"""Example Clerk webhook payloads, one for each event type the worker handles, shaped like the
ones Clerk sends (envelope, ``data``, fake ``*_2FAKE*`` ids), for ``clerk-sync send-example``.

In order they tell one story, a minute old: the organization Acme is created and updated; Jane
signs up and updates her profile; a permission is created and renamed, and a Billing Manager
role granting it (and then a second permission too); Acme claims its domain and verifies it;
Jane is invited, accepts, joins Acme and is made an admin, while an invitation to Sam is
revoked. John, who never came through these examples, leaves Acme and deletes his account; an
old domain, permission, role and organization are deleted. So the deletions leave tombstones
and what was created stays in the tables to look at. Times are taken from the clock: each run
is a newer version of the same rows.
"""

from __future__ import annotations

from typing import Any, Final

from clerk_sync.cli.clerk_payloads import (
    deleted_object_data,
    deleted_organization_data,
    deleted_user_data,
    domain_data,
    event,
    invitation_data,
    membership_data,
    organization_data,
    permission_data,
    role_data,
    user_data,
    verification_data,
)

ORGANIZATION_ID: Final = "org_2FAKEorg00000000000000000001"
OLD_ORGANIZATION_ID: Final = "org_2FAKEorg00000000000000000002"
JANE_ID: Final = "user_2FAKEuser0000000000000000002"
JOHN_ID: Final = "user_2FAKEuser0000000000000000003"
JANE_MEMBERSHIP_ID: Final = "orgmem_2FAKEmem00000000000000000002"
JOHN_MEMBERSHIP_ID: Final = "orgmem_2FAKEmem00000000000000000003"
WORKSPACE_ID: Final = "workspace_example"
ROLE_ID: Final = "role_2FAKErole0000000000000000001"
OLD_ROLE_ID: Final = "role_2FAKErole0000000000000000002"
PERMISSION_IDS: Final = ("perm_2FAKEperm0000000000000000001", "perm_2FAKEperm0000000000000000002")
OLD_PERMISSION_ID: Final = "perm_2FAKEperm0000000000000000003"
JANE_INVITATION_ID: Final = "orginv_2FAKEinv00000000000000000001"
SAM_INVITATION_ID: Final = "orginv_2FAKEinv00000000000000000002"
DOMAIN_ID: Final = "orgdmn_2FAKEdmn00000000000000000001"
OLD_DOMAIN_ID: Final = "orgdmn_2FAKEdmn00000000000000000002"

EXAMPLE_TYPES: Final = (
    "organization.created",
    "organization.updated",
    "user.created",
    "user.updated",
    "permission.created",
    "permission.updated",
    "role.created",
    "role.updated",
    "organizationDomain.created",
    "organizationDomain.updated",
    "organizationInvitation.created",
    "organizationInvitation.revoked",
    "organizationInvitation.accepted",
    "organizationMembership.created",
    "organizationMembership.updated",
    "organizationMembership.deleted",
    "organizationDomain.deleted",
    "permission.deleted",
    "role.deleted",
    "user.deleted",
    "organization.deleted",
)
"""The order they are sent in: organizations and users before the memberships that name them,
deletions last."""

STEP_MS: Final = 1000
STORY_AGO_MS: Final = 60_000
DAY_MS: Final = 86_400_000
USER_AGENT: Final = "clerk-sync send-example"


def example_payloads(now_ms: int, workspace_key: str) -> dict[str, dict[str, Any]]:
    """Event type → payload, in ``EXAMPLE_TYPES`` order, the story set a minute before
    ``now_ms``; ``workspace_key`` is the ``public_metadata`` key the worker copies into
    ``organizations.workspace_id`` (``CLERK_SYNC_WORKSPACE_METADATA_KEY``)."""
    start = now_ms - STORY_AGO_MS
    at = {event_type: start + index * STEP_MS for index, event_type in enumerate(EXAMPLE_TYPES)}
    created = at["organization.created"]
    acme = organization_data(ORGANIZATION_ID, created_at=created, updated_at=created)
    acme_updated = organization_data(
        ORGANIZATION_ID,
        created_at=created,
        updated_at=at["organization.updated"],
        members_count=2,
        max_allowed_memberships=10,
        public_metadata={workspace_key: WORKSPACE_ID},
    )
    jane = _person(JANE_ID, "Jane", "Tester", at["user.created"], at["user.created"])
    jane_updated = _person(
        JANE_ID, "Jane", "Example", at["user.created"], at["user.updated"], username="jane"
    )
    joined = at["organizationMembership.created"]
    john_joined = created - DAY_MS
    john = _person(JOHN_ID, "John", "Leaver", john_joined, john_joined)
    data = {
        **_organization_model(at, acme_updated, jane_updated),
        "organization.created": acme,
        "organization.updated": acme_updated,
        "user.created": jane,
        "user.updated": jane_updated,
        "organizationMembership.created": _member(
            JANE_MEMBERSHIP_ID, acme_updated, jane_updated, "org:member", joined, joined
        ),
        "organizationMembership.updated": _member(
            JANE_MEMBERSHIP_ID,
            acme_updated,
            jane_updated,
            "org:admin",
            joined,
            at["organizationMembership.updated"],
        ),
        "organizationMembership.deleted": _member(
            JOHN_MEMBERSHIP_ID, acme_updated, john, "org:member", john_joined, john_joined
        ),
        "organizationDomain.deleted": deleted_object_data("organization_domain", OLD_DOMAIN_ID),
        "permission.deleted": deleted_object_data("permission", OLD_PERMISSION_ID),
        "role.deleted": deleted_object_data("role", OLD_ROLE_ID),
        "user.deleted": deleted_user_data(JOHN_ID),
        "organization.deleted": deleted_organization_data(OLD_ORGANIZATION_ID, "old-test-org"),
    }
    return {
        event_type: event(event_type, data[event_type], at[event_type], user_agent=USER_AGENT)
        for event_type in EXAMPLE_TYPES
    }


def _organization_model(
    at: dict[str, int], acme: dict[str, Any], jane: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """The roles, permissions, domain and invitations of the story."""
    created = at["permission.created"]
    reports = permission_data(PERMISSION_IDS[0], created_at=created)
    reports_renamed = permission_data(
        PERMISSION_IDS[0],
        name="Read and export reports",
        created_at=created,
        updated_at=at["permission.updated"],
    )
    invoices = permission_data(
        PERMISSION_IDS[1],
        key="org:invoices:manage",
        name="Manage invoices",
        description="Create, edit and void invoices",
        created_at=at["role.updated"],
    )
    role_created = at["role.created"]
    domain_created = at["organizationDomain.created"]
    invited = at["organizationInvitation.created"]
    jane_email = jane["email_addresses"][-1]["email_address"]
    owner = _person(acme["created_by"], "Alex", "Owner", acme["created_at"], acme["created_at"])
    return {
        "permission.created": reports,
        "permission.updated": reports_renamed,
        "role.created": role_data(ROLE_ID, permissions=[reports_renamed], created_at=role_created),
        "role.updated": role_data(
            ROLE_ID,
            description="Can read reports and manage invoices for the organization",
            permissions=[reports_renamed, invoices],
            created_at=role_created,
            updated_at=at["role.updated"],
        ),
        "organizationDomain.created": domain_data(
            acme, domain_id=DOMAIN_ID, created_at=domain_created, with_organization=True
        ),
        "organizationDomain.updated": domain_data(
            acme,
            domain_id=DOMAIN_ID,
            enrollment_mode="automatic_suggestion",
            ownership=verification_data(
                strategy="manual_override", verified_at=at["organizationDomain.updated"]
            ),
            created_at=domain_created,
            updated_at=at["organizationDomain.updated"],
        ),
        "organizationInvitation.created": invitation_data(
            ORGANIZATION_ID,
            invitation_id=JANE_INVITATION_ID,
            email=jane_email,
            inviter=owner,
            created_at=invited,
        ),
        "organizationInvitation.revoked": invitation_data(
            ORGANIZATION_ID,
            invitation_id=SAM_INVITATION_ID,
            email="sam.sample@example.com",
            status="revoked",
            inviter=owner,
            created_at=invited,
            updated_at=at["organizationInvitation.revoked"],
        ),
        "organizationInvitation.accepted": invitation_data(
            ORGANIZATION_ID,
            invitation_id=JANE_INVITATION_ID,
            email=jane_email,
            status="accepted",
            inviter=owner,
            accepted_by=JANE_ID,
            created_at=invited,
            updated_at=at["organizationInvitation.accepted"],
        ),
    }


def _person(
    user_id: str,
    first_name: str,
    last_name: str,
    created_at: int,
    updated_at: int,
    *,
    username: str | None = None,
) -> dict[str, Any]:
    email = f"{first_name}.{last_name}@example.com".lower()
    return user_data(
        user_id,
        first_name=first_name,
        last_name=last_name,
        username=username,
        email=email,
        created_at=created_at,
        updated_at=updated_at,
    )


def _member(
    membership_id: str,
    organization: dict[str, Any],
    user: dict[str, Any],
    role: str,
    created_at: int,
    updated_at: int,
) -> dict[str, Any]:
    """``user``'s membership, its public data taken from the user as Clerk does."""
    return membership_data(
        organization,
        membership_id=membership_id,
        user_id=user["id"],
        role=role,
        created_at=created_at,
        updated_at=updated_at,
        first_name=user["first_name"],
        last_name=user["last_name"],
        identifier=user["email_addresses"][-1]["email_address"],
        image_url=user["image_url"],
    )
