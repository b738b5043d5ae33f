"""``user.*`` events."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from models.tombstones import USER
from models.unit_of_work import UnitOfWork
from models.users import UserSnapshot, delete_user, upsert_user
from workers.handlers.family import EventFamily, TargetSink
from workers.handlers.payloads import (
    Envelope,
    id_in,
    optional,
    require,
    require_event_time,
    require_timestamp,
)


def user_snapshot(data: Mapping[str, Any], where: str = "data") -> UserSnapshot:
    """A Clerk User object (webhook ``data`` or a Backend API user) as a snapshot."""
    metadata = data.get("public_metadata")
    return UserSnapshot(
        id=require(data, "id", str, where),
        primary_email_address=primary_email_address(data),
        username=optional(data, "username", str),
        first_name=optional(data, "first_name", str),
        last_name=optional(data, "last_name", str),
        image_url=optional(data, "image_url", str),
        external_id=optional(data, "external_id", str),
        public_metadata=dict(metadata) if isinstance(metadata, dict) else {},
        created_at=require_timestamp(data, "created_at", where),
        updated_at=require_timestamp(data, "updated_at", where),
    )


def primary_email_address(data: Mapping[str, Any]) -> str | None:
    """The address ``primary_email_address_id`` points at; None when there is no primary, or it
    is not among ``email_addresses`` (which may be ``[]``). Never ``email_addresses[0]``: the
    first address need not be the primary one."""
    primary_id = optional(data, "primary_email_address_id", str)
    addresses = data.get("email_addresses")
    if primary_id is None or not isinstance(addresses, list):
        return None
    for address in addresses:
        if isinstance(address, dict) and address.get("id") == primary_id:
            return optional(address, "email_address", str)  # type: ignore[no-any-return]
    return None


def on_user_upserted(work: UnitOfWork, envelope: Envelope, _workspace_key: str) -> None:
    """``user.created`` and ``.updated`` are the same upsert: either may arrive first."""
    upsert_user(work, user_snapshot(envelope.data))


def on_user_deleted(work: UnitOfWork, envelope: Envelope, _workspace_key: str) -> None:
    """The payload is a DeletedObject (``{object, id, deleted}``, maybe ``external_id``) with no
    version: the envelope time dates the deletion."""
    delete_user(work, require(envelope.data, "id", str, "data"), require_event_time(envelope))


def add_targets(targets: TargetSink, _action: str, data: Mapping[str, Any]) -> None:
    """``data.id``: the payload is the user (or, deleted, a DeletedObject with its id)."""
    if user_id := id_in(data, "id"):
        targets.users.add(user_id)
        targets.tombstones.add((USER, user_id))


PERSONAL_FIELDS: Final[dict[str, Any]] = {
    "first_name": None,
    "last_name": None,
    "username": None,
    "image_url": None,
    "profile_image_url": None,
    "external_id": None,
    "primary_email_address_id": None,
    "primary_phone_number_id": None,
    "primary_web3_wallet_id": None,
    "email_addresses": [],
    "phone_numbers": [],
    "web3_wallets": [],
    "external_accounts": [],
    "saml_accounts": [],
    "passkeys": [],
    "public_metadata": {},
    "private_metadata": {},
    "unsafe_metadata": {},
}
"""What a User object holds about the person, and what it is erased to."""


def user_id(data: Mapping[str, Any]) -> str | None:
    """``data.id``: the payload is the user."""
    return id_in(data, "id") or None


def redact(data: dict[str, Any]) -> None:
    for name, erased in PERSONAL_FIELDS.items():
        if name in data:
            data[name] = erased


FAMILY = EventFamily(
    name="user",
    handlers={"created": on_user_upserted, "updated": on_user_upserted, "deleted": on_user_deleted},
    add_targets=add_targets,
    # A user is in no one organization: like other types, ``data.organization_id`` if any.
    organization_id=None,
    user_id=user_id,
    redact=redact,
)
