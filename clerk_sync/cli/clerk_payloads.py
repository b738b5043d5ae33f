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
