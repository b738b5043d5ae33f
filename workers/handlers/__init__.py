"""Event type → handler. Types not listed here are recorded as ``skipped``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from sqlalchemy import Connection

from workers.handlers.memberships import on_membership_deleted, on_membership_upserted
from workers.handlers.organizations import on_organization_deleted, on_organization_upserted
from workers.handlers.payloads import Envelope
from workers.handlers.users import on_user_deleted, on_user_upserted

Handler = Callable[[Connection, Envelope, str], None]

HANDLERS: Final[dict[str, Handler]] = {
    "organization.created": on_organization_upserted,
    "organization.updated": on_organization_upserted,
    "organization.deleted": on_organization_deleted,
    "organizationMembership.created": on_membership_upserted,
    "organizationMembership.updated": on_membership_upserted,
    "organizationMembership.deleted": on_membership_deleted,
    "user.created": on_user_upserted,
    "user.updated": on_user_upserted,
    "user.deleted": on_user_deleted,
}
