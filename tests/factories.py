"""Small builders for Clerk-shaped payloads (``clerk_sync.cli.clerk_payloads``, shaped like
../shared/reference/clerk-payloads/) and Svix signatures made with svix's own ``Webhook.sign``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from svix.webhooks import Webhook

from clerk_sync.cli.clerk_payloads import (
    BASE_TIME_MS,
    deleted_object_data,
    deleted_organization_data,
    deleted_user_data,
    domain_data,
    email_address_data,
    event,
    invitation_data,
    membership_data,
    new_id,
    organization_data,
    permission_data,
    role_data,
    user_data,
    verification_data,
)

__all__ = [
    "BASE_TIME_MS",
    "body_of",
    "deleted_object_data",
    "deleted_organization_data",
    "deleted_user_data",
    "domain_data",
    "email_address_data",
    "event",
    "invitation_data",
    "membership_data",
    "new_id",
    "new_svix_id",
    "organization_data",
    "permission_data",
    "role_data",
    "signed_headers",
    "user_data",
    "verification_data",
]


def new_svix_id() -> str:
    return new_id("msg")


def body_of(payload: dict[str, Any]) -> str:
    return json.dumps(payload, separators=(",", ":"))


def signed_headers(
    secret: str,
    body: str | bytes,
    *,
    svix_id: str | None = None,
    at: datetime | None = None,
) -> dict[str, str]:
    """Headers exactly as Svix sends them, signed by svix's own ``Webhook.sign``."""
    svix_id = svix_id or new_svix_id()
    at = at or datetime.now(UTC)
    text = body.decode() if isinstance(body, bytes) else body
    return {
        "svix-id": svix_id,
        "svix-timestamp": str(int(at.timestamp())),
        "svix-signature": Webhook(secret).sign(svix_id, at, text),
        "content-type": "application/json",
    }
