"""Builders of Clerk-shaped webhook payloads (envelope and ``data``, as in
``../shared/reference/clerk-payloads/``), with fake ids: the examples ``clerk-sync send-example``
sends are made with them, and so are the tests' payloads."""

from __future__ import annotations

import uuid
from typing import Any, Final

BASE_TIME_MS: Final = 1_767_225_600_000
"""2026-01-01T00:00:00Z, the default time of a built payload."""

MEMBER_PERMISSIONS: Final = ["org:sys_billing:read", "org:sys_memberships:read"]
ADMIN_PERMISSIONS: Final = [
    "org:sys_memberships:manage",
    "org:sys_memberships:read",
    "org:sys_profile:manage",
]


def new_id(prefix: str) -> str:
    """A fresh id with Clerk's prefix (``org``, ``user``, ``orgmem``, ``msg``)."""
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def organization_data(
    org_id: str | None = None,
    *,
    name: str = "Acme Test Org",
    slug: str | None = "acme-test-org",
    updated_at: int = BASE_TIME_MS,
    created_at: int = BASE_TIME_MS,
    public_metadata: dict[str, Any] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """A Clerk Organization (``organization.*`` data, or nested in a membership)."""
    data: dict[str, Any] = {
        "object": "organization",
        "id": org_id or new_id("org"),
        "name": name,
        "slug": slug,
        "image_url": "https://img.clerk.com/fake-org-image",
        "has_image": False,
        "members_count": 1,
        "missing_member_with_elevated_permissions": False,
        "pending_invitations_count": 0,
        "max_allowed_memberships": 5,
        "admin_delete_enabled": True,
        "public_metadata": public_metadata if public_metadata is not None else {},
        "private_metadata": {},
        "created_by": "user_2FAKEuser0000000000000000001",
        "created_at": created_at,
        "updated_at": updated_at,
    }
    data.update(overrides)
    return data


def deleted_organization_data(org_id: str, slug: str | None = "acme-test-org") -> dict[str, Any]:
    """``organization.deleted`` data: a DeletedObject, with the slug Clerk adds."""
    data: dict[str, Any] = {"deleted": True, "id": org_id, "object": "organization"}
    if slug is not None:
        data["slug"] = slug
    return data


def membership_data(
    organization: dict[str, Any],
    *,
    membership_id: str | None = None,
    user_id: str | None = None,
    role: str = "org:member",
    created_at: int = BASE_TIME_MS + 60_000,
    updated_at: int | None = None,
    first_name: str | None = "Jane",
    last_name: str | None = "Tester",
    identifier: str | None = "jane.tester@example.com",
    image_url: str = "https://img.clerk.com/fake-user-image",
    permissions: list[str] | None = None,
    public_metadata: dict[str, Any] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """A Clerk OrganizationMembership, with the organization and the member's public data."""
    if permissions is None:
        permissions = ADMIN_PERMISSIONS if role == "org:admin" else MEMBER_PERMISSIONS
    data: dict[str, Any] = {
        "object": "organization_membership",
        "id": membership_id or new_id("orgmem"),
        "role": role,
        "role_name": "Admin" if role == "org:admin" else "Member",
        "permissions": permissions,
        "public_metadata": public_metadata if public_metadata is not None else {},
        "private_metadata": {},
        "organization": organization,
        "public_user_data": {
            "user_id": user_id or new_id("user"),
            "first_name": first_name,
            "last_name": last_name,
            "profile_image_url": image_url,
            "image_url": image_url,
            "has_image": False,
            "identifier": identifier,
        },
        "created_at": created_at,
        "updated_at": created_at if updated_at is None else updated_at,
    }
    data.update(overrides)
    return data


def user_data(
    user_id: str | None = None,
    *,
    first_name: str | None = "Jane",
    last_name: str | None = "Tester",
    username: str | None = None,
    email: str | None = "jane.tester@example.com",
    created_at: int = BASE_TIME_MS,
    updated_at: int | None = None,
    public_metadata: dict[str, Any] | None = None,
    external_id: str | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """A Clerk User object (webhook ``user.created``/``.updated`` data, or a Backend API user).
    ``email`` becomes the primary address, listed after a secondary one (so that taking
    ``email_addresses[0]`` would be wrong); ``email=None`` gives ``email_addresses: []``."""
    user_id = user_id or new_id("user")
    suffix = user_id.removeprefix("user_")
    addresses: list[dict[str, Any]] = []
    if email is not None:
        addresses = [
            email_address_data(f"idn_{suffix}_2", f"secondary.{email}"),
            email_address_data(f"idn_{suffix}_1", email),
        ]
    data: dict[str, Any] = {
        "object": "user",
        "id": user_id,
        "username": username,
        "first_name": first_name,
        "last_name": last_name,
        "image_url": f"https://img.clerk.com/{suffix}",
        "profile_image_url": f"https://img.clerk.com/{suffix}",
        "has_image": False,
        "primary_email_address_id": f"idn_{suffix}_1" if email is not None else None,
        "primary_phone_number_id": None,
        "primary_web3_wallet_id": None,
        "password_enabled": True,
        "two_factor_enabled": False,
        "totp_enabled": False,
        "backup_code_enabled": False,
        "email_addresses": addresses,
        "phone_numbers": [],
        "web3_wallets": [],
        "external_accounts": [],
        "saml_accounts": [],
        "passkeys": [],
        "public_metadata": public_metadata if public_metadata is not None else {},
        "private_metadata": {},
        "unsafe_metadata": {},
        "external_id": external_id,
        "last_sign_in_at": None,
        "last_active_at": None,
        "banned": False,
        "locked": False,
        "lockout_expires_in_seconds": None,
        "verification_attempts_remaining": 100,
        "delete_self_enabled": True,
        "create_organization_enabled": True,
        "created_at": created_at,
        "updated_at": created_at if updated_at is None else updated_at,
    }
    data.update(overrides)
    return data


def email_address_data(address_id: str, address: str) -> dict[str, Any]:
    return {
        "object": "email_address",
        "id": address_id,
        "email_address": address,
        "reserved": False,
        "verification": {"status": "verified", "strategy": "email_code", "attempts": 1},
        "linked_to": [],
    }


def deleted_user_data(user_id: str, external_id: str | None = None) -> dict[str, Any]:
    """``user.deleted`` data: a DeletedObject, plus ``external_id`` if one was set."""
    data: dict[str, Any] = {"deleted": True, "id": user_id, "object": "user"}
    if external_id is not None:
        data["external_id"] = external_id
    return data


def permission_data(
    permission_id: str | None = None,
    *,
    key: str = "org:reports:read",
    name: str = "Read reports",
    description: str = "View the organization's reports",
    created_at: int = BASE_TIME_MS,
    updated_at: int | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """A Clerk Permission (``permission.*`` data, or embedded in a role)."""
    data: dict[str, Any] = {
        "object": "permission",
        "id": permission_id or new_id("perm"),
        "name": name,
        "key": key,
        "description": description,
        "type": "custom",
        "created_at": created_at,
        "updated_at": created_at if updated_at is None else updated_at,
    }
    data.update(overrides)
    return data


def role_data(
    role_id: str | None = None,
    *,
    key: str = "org:billing_manager",
    name: str = "Billing Manager",
    description: str | None = "Can read reports and manage billing for the organization",
    permissions: list[dict[str, Any]] | None = None,
    created_at: int = BASE_TIME_MS,
    updated_at: int | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """A Clerk Role (``role.*`` data), embedding the full permissions it grants."""
    data: dict[str, Any] = {
        "object": "role",
        "id": role_id or new_id("role"),
        "name": name,
        "key": key,
        "description": description,
        "is_creator_eligible": False,
        "permissions": permissions if permissions is not None else [],
        "created_at": created_at,
        "updated_at": created_at if updated_at is None else updated_at,
    }
    data.update(overrides)
    return data


def deleted_object_data(kind: str, object_id: str) -> dict[str, Any]:
    """``role.deleted``, ``permission.deleted``, ``organizationDomain.deleted`` data: a
    DeletedObject (``kind`` is its ``object``: ``role``, ``permission``,
    ``organization_domain``); a role's has ``slug: null`` as in Clerk's example."""
    data: dict[str, Any] = {"deleted": True, "id": object_id, "object": kind}
    if kind == "role":
        data["slug"] = None
    return data


def invitation_data(
    organization_id: str,
    *,
    invitation_id: str | None = None,
    email: str | None = "jane.tester@example.com",
    role: str = "org:member",
    status: str = "pending",
    inviter: dict[str, Any] | None = None,
    accepted_by: str | None = None,
    created_at: int = BASE_TIME_MS,
    updated_at: int | None = None,
    public_metadata: dict[str, Any] | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """A Clerk OrganizationInvitation (``organizationInvitation.*`` data); ``inviter`` is a
    ``user_data`` whose public data is copied, ``accepted_by`` the accepting user's id (then
    ``user_id`` is set, as on ``.accepted``)."""
    inviter_data = None
    if inviter is not None:
        inviter_data = {
            "user_id": inviter["id"],
            "first_name": inviter["first_name"],
            "last_name": inviter["last_name"],
            "image_url": inviter["image_url"],
            "has_image": False,
            "identifier": (inviter["email_addresses"] or [{"email_address": None}])[-1][
                "email_address"
            ],
        }
    data: dict[str, Any] = {
        "object": "organization_invitation",
        "id": invitation_id or new_id("orginv"),
        "email_address": email,
        "role": role,
        "role_name": "Admin" if role == "org:admin" else "Member",
        "organization_id": organization_id,
        "inviter_id": None if inviter is None else inviter["id"],
        "public_inviter_data": inviter_data,
        "status": status,
        "public_metadata": public_metadata if public_metadata is not None else {},
        "private_metadata": {},
        "url": "https://accounts.example.com/accept-invitation?token=FAKE-TOKEN",
        "expires_at": created_at + 30 * 86_400_000,
        "created_at": created_at,
        "updated_at": created_at if updated_at is None else updated_at,
    }
    if accepted_by is not None:
        data["user_id"] = accepted_by
    data.update(overrides)
    return data


def verification_data(
    status: str = "verified", strategy: str = "email_code", verified_at: int | None = None
) -> dict[str, Any]:
    """A domain's verification (affiliation, ownership, or the deprecated ``verification``)."""
    return {
        "status": status,
        "strategy": strategy,
        "attempts": 1,
        "expire_at": None,
        "verified_at": verified_at,
    }


def domain_data(
    organization: dict[str, Any],
    *,
    domain_id: str | None = None,
    name: str = "example.com",
    enrollment_mode: str = "automatic_invitation",
    affiliation: dict[str, Any] | None = None,
    ownership: dict[str, Any] | None = None,
    created_at: int = BASE_TIME_MS,
    updated_at: int | None = None,
    with_organization: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """A Clerk OrganizationDomain (``organizationDomain.*`` data) of ``organization``;
    ``affiliation`` is also sent as the deprecated ``verification``; ``with_organization`` adds
    ``public_organization_data`` (as Clerk's ``.created`` example has it)."""
    affiliation = verification_data() if affiliation is None else affiliation
    data: dict[str, Any] = {
        "object": "organization_domain",
        "id": domain_id or new_id("orgdmn"),
        "organization_id": organization["id"],
        "name": name,
        "enrollment_mode": enrollment_mode,
        "affiliation_email_address": f"admin@{name}",
        "affiliation_verification": affiliation,
        "ownership_verification": ownership,
        "verification": affiliation,
        "total_pending_invitations": 0,
        "total_pending_suggestions": 0,
        "created_at": created_at,
        "updated_at": created_at if updated_at is None else updated_at,
    }
    if with_organization:
        data["public_organization_data"] = {
            key: organization[key] for key in ("id", "name", "slug", "image_url", "has_image")
        }
    data.update(overrides)
    return data


def event(
    event_type: str,
    data: dict[str, Any],
    timestamp: int | None = None,
    *,
    user_agent: str = "Mozilla/5.0 (test)",
) -> dict[str, Any]:
    """The envelope Clerk wraps every event in."""
    return {
        "data": data,
        "event_attributes": {
            "http_request": {"client_ip": "203.0.113.10", "user_agent": user_agent}
        },
        "instance_id": "ins_2FAKEinstance0000000000000",
        "object": "event",
        "timestamp": timestamp if timestamp is not None else data.get("updated_at", BASE_TIME_MS),
        "type": event_type,
    }
