"""Example Clerk webhook payloads, one for each event type the worker handles, shaped like the
ones Clerk sends (envelope, ``data``, fake ``*_2FAKE*`` ids), for ``clerk-sync send-example``.

In order they tell one story, a minute old: the organization Acme is created and updated; Jane
signs up and updates her profile; she joins Acme and is made an admin. John, who never came
through these examples, leaves Acme and deletes his account; an old organization is deleted.
So the deletions leave tombstones and what was created stays in the tables to look at. Times
are taken from the clock: each run is a newer version of the same rows.
"""

from __future__ import annotations

from typing import Any, Final

INSTANCE_ID: Final = "ins_2FAKEinstance0000000000000"
ORGANIZATION_ID: Final = "org_2FAKEorg00000000000000000001"
OLD_ORGANIZATION_ID: Final = "org_2FAKEorg00000000000000000002"
CREATOR_ID: Final = "user_2FAKEuser0000000000000000001"
JANE_ID: Final = "user_2FAKEuser0000000000000000002"
JOHN_ID: Final = "user_2FAKEuser0000000000000000003"
JANE_MEMBERSHIP_ID: Final = "orgmem_2FAKEmem00000000000000000002"
JOHN_MEMBERSHIP_ID: Final = "orgmem_2FAKEmem00000000000000000003"
WORKSPACE_ID: Final = "workspace_example"

EXAMPLE_TYPES: Final = (
    "organization.created",
    "organization.updated",
    "user.created",
    "user.updated",
    "organizationMembership.created",
    "organizationMembership.updated",
    "organizationMembership.deleted",
    "user.deleted",
    "organization.deleted",
)
"""The order they are sent in: organizations and users before the memberships that name them,
deletions last."""

STEP_MS: Final = 1000
STORY_AGO_MS: Final = 60_000
DAY_MS: Final = 86_400_000
MEMBER_PERMISSIONS: Final = ["org:sys_billing:read", "org:sys_memberships:read"]
ADMIN_PERMISSIONS: Final = [
    "org:sys_billing:manage",
    "org:sys_billing:read",
    "org:sys_domains:manage",
    "org:sys_domains:read",
    "org:sys_memberships:manage",
    "org:sys_memberships:read",
    "org:sys_profile:delete",
    "org:sys_profile:manage",
]


def example_payloads(now_ms: int, workspace_key: str) -> dict[str, dict[str, Any]]:
    """Event type → payload, in ``EXAMPLE_TYPES`` order, the story set a minute before
    ``now_ms``; ``workspace_key`` is the ``public_metadata`` key the worker copies into
    ``organizations.workspace_id`` (``CLERK_SYNC_WORKSPACE_METADATA_KEY``)."""
    start = now_ms - STORY_AGO_MS
    at = {event_type: start + index * STEP_MS for index, event_type in enumerate(EXAMPLE_TYPES)}
    created = at["organization.created"]
    acme = _organization(created, created)
    acme_updated = _organization(
        created,
        at["organization.updated"],
        members_count=2,
        max_allowed_memberships=10,
        public_metadata={workspace_key: WORKSPACE_ID},
    )
    jane = _user(JANE_ID, "Jane", "Tester", at["user.created"], at["user.created"])
    jane_updated = _user(
        JANE_ID, "Jane", "Example", at["user.created"], at["user.updated"], username="jane"
    )
    joined = at["organizationMembership.created"]
    john_joined = created - DAY_MS
    data = {
        "organization.created": acme,
        "organization.updated": acme_updated,
        "user.created": jane,
        "user.updated": jane_updated,
        "organizationMembership.created": _membership(
            JANE_MEMBERSHIP_ID, acme_updated, jane_updated, "org:member", joined, joined
        ),
        "organizationMembership.updated": _membership(
            JANE_MEMBERSHIP_ID,
            acme_updated,
            jane_updated,
            "org:admin",
            joined,
            at["organizationMembership.updated"],
        ),
        "organizationMembership.deleted": _membership(
            JOHN_MEMBERSHIP_ID,
            acme_updated,
            _user(JOHN_ID, "John", "Leaver", john_joined, john_joined),
            "org:member",
            john_joined,
            john_joined,
        ),
        "user.deleted": {"deleted": True, "id": JOHN_ID, "object": "user"},
        "organization.deleted": {
            "deleted": True,
            "id": OLD_ORGANIZATION_ID,
            "object": "organization",
            "slug": "old-test-org",
        },
    }
    return {
        event_type: _envelope(event_type, data[event_type], at[event_type])
        for event_type in EXAMPLE_TYPES
    }


def _envelope(event_type: str, data: dict[str, Any], timestamp: int) -> dict[str, Any]:
    return {
        "data": data,
        "event_attributes": {
            "http_request": {"client_ip": "203.0.113.10", "user_agent": "clerk-sync send-example"}
        },
        "instance_id": INSTANCE_ID,
        "object": "event",
        "timestamp": timestamp,
        "type": event_type,
    }


def _organization(
    created_at: int,
    updated_at: int,
    *,
    members_count: int = 1,
    max_allowed_memberships: int = 5,
    public_metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "object": "organization",
        "id": ORGANIZATION_ID,
        "name": "Acme Test Org",
        "slug": "acme-test-org",
        "image_url": "https://img.clerk.com/fake-org-image",
        "has_image": False,
        "members_count": members_count,
        "missing_member_with_elevated_permissions": False,
        "pending_invitations_count": 0,
        "max_allowed_memberships": max_allowed_memberships,
        "admin_delete_enabled": True,
        "public_metadata": public_metadata or {},
        "private_metadata": {},
        "created_by": CREATOR_ID,
        "created_at": created_at,
        "updated_at": updated_at,
    }


def _user(
    user_id: str,
    first_name: str,
    last_name: str,
    created_at: int,
    updated_at: int,
    *,
    username: str | None = None,
) -> dict[str, Any]:
    """A Clerk User object; its primary address is not the first listed, as may happen."""
    suffix = user_id.removeprefix("user_")
    address = f"{first_name}.{last_name}@example.com".lower()
    return {
        "object": "user",
        "id": user_id,
        "username": username,
        "first_name": first_name,
        "last_name": last_name,
        "image_url": "https://img.clerk.com/fake-user-image",
        "profile_image_url": "https://img.clerk.com/fake-user-image",
        "has_image": False,
        "primary_email_address_id": f"idn_{suffix}1",
        "primary_phone_number_id": None,
        "primary_web3_wallet_id": None,
        "password_enabled": True,
        "two_factor_enabled": False,
        "totp_enabled": False,
        "backup_code_enabled": False,
        "email_addresses": [
            _email_address(f"idn_{suffix}2", f"old.{address}"),
            _email_address(f"idn_{suffix}1", address),
        ],
        "phone_numbers": [],
        "web3_wallets": [],
        "external_accounts": [],
        "saml_accounts": [],
        "passkeys": [],
        "public_metadata": {},
        "private_metadata": {},
        "unsafe_metadata": {},
        "external_id": None,
        "last_sign_in_at": None,
        "last_active_at": None,
        "banned": False,
        "locked": False,
        "lockout_expires_in_seconds": None,
        "verification_attempts_remaining": 100,
        "delete_self_enabled": True,
        "create_organization_enabled": True,
        "created_at": created_at,
        "updated_at": updated_at,
    }


def _email_address(address_id: str, address: str) -> dict[str, Any]:
    return {
        "object": "email_address",
        "id": address_id,
        "email_address": address,
        "reserved": False,
        "verification": {"status": "verified", "strategy": "email_code", "attempts": 1},
        "linked_to": [],
    }


def _membership(
    membership_id: str,
    organization: dict[str, Any],
    user: dict[str, Any],
    role: str,
    created_at: int,
    updated_at: int,
) -> dict[str, Any]:
    admin = role == "org:admin"
    return {
        "object": "organization_membership",
        "id": membership_id,
        "role": role,
        "role_name": "Admin" if admin else "Member",
        "permissions": ADMIN_PERMISSIONS if admin else MEMBER_PERMISSIONS,
        "public_metadata": {},
        "private_metadata": {},
        "organization": organization,
        "public_user_data": {
            "user_id": user["id"],
            "first_name": user["first_name"],
            "last_name": user["last_name"],
            "profile_image_url": user["profile_image_url"],
            "image_url": user["image_url"],
            "has_image": user["has_image"],
            "identifier": user["email_addresses"][-1]["email_address"],
        },
        "created_at": created_at,
        "updated_at": updated_at,
    }
