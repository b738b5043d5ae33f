"""Helpers for the models tests: deliver events through the worker's real code path and read
tables back as plain dicts.

Everything goes through ``workers.processing.describe_event`` + ``apply_event``, exactly as the
Celery task does, so these tests exercise the handlers, the inbox and the mutations together.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Engine, Table, select

from models.tables import (
    organization_memberships,
    organizations,
    tombstones,
    users,
    webhook_events,
)
from tests.factories import BASE_TIME_MS, body_of, new_svix_id
from workers.processing import apply_event, describe_event

WORKSPACE_KEY = "convexWorkspaceId"
RECEIVED_AT_MS = BASE_TIME_MS + 86_400_000


def deliver(
    engine: Engine,
    payload: dict[str, Any] | str,
    *,
    svix_id: str | None = None,
    workspace_key: str = WORKSPACE_KEY,
    received_at_ms: int = RECEIVED_AT_MS,
) -> str:
    """Apply one webhook body as the worker does; returns the inbox status afterwards."""
    body = payload if isinstance(payload, str) else body_of(payload)
    return apply_event(
        engine,
        describe_event(svix_id or new_svix_id(), body, received_at_ms),
        workspace_key,
    )


def rows(
    engine: Engine, table: Table, *, without: tuple[str, ...] = ("synced_at", "synced_by")
) -> list[dict]:
    """All rows of ``table`` as dicts, ordered by primary key, minus the ``without`` columns."""
    key = list(table.primary_key.columns)
    with engine.connect() as connection:
        result = connection.execute(select(table).order_by(*key)).mappings().all()
    return [{k: v for k, v in row.items() if k not in without} for row in result]


def organization_rows(engine: Engine) -> list[dict]:
    return rows(engine, organizations)


def membership_rows(engine: Engine) -> list[dict]:
    return rows(engine, organization_memberships)


def user_rows(engine: Engine) -> list[dict]:
    return rows(engine, users)


def synced_state(engine: Engine) -> tuple[list[dict], list[dict]]:
    """What other applications read: organizations and memberships, without ``synced_at``."""
    return organization_rows(engine), membership_rows(engine)


def synced_tables(engine: Engine) -> tuple[list[dict], list[dict], list[dict]]:
    """Organizations, memberships and users, without ``synced_at`` (``synced_state`` plus
    users); compare with ``ClerkHistory.expected_state()``."""
    return organization_rows(engine), membership_rows(engine), user_rows(engine)


def user_row(engine: Engine, user_id: str) -> dict | None:
    found = [row for row in user_rows(engine) if row["id"] == user_id]
    return found[0] if found else None


def organization_row(engine: Engine, organization_id: str) -> dict | None:
    found = [row for row in organization_rows(engine) if row["id"] == organization_id]
    return found[0] if found else None


def membership_row(engine: Engine, membership_id: str) -> dict | None:
    found = [row for row in membership_rows(engine) if row["id"] == membership_id]
    return found[0] if found else None


def tombstone_rows(engine: Engine) -> list[dict]:
    return rows(engine, tombstones)


def tombstone_row(engine: Engine, entity_type: str, entity_id: str) -> dict | None:
    found = [
        row
        for row in tombstone_rows(engine)
        if row["entity_type"] == entity_type and row["entity_id"] == entity_id
    ]
    return found[0] if found else None


def inbox_row(engine: Engine, svix_id: str) -> dict | None:
    found = [row for row in rows(engine, webhook_events, without=()) if row["svix_id"] == svix_id]
    return found[0] if found else None


def workspace_of(public_metadata: dict[str, Any], key: str = WORKSPACE_KEY) -> str | None:
    """The documented rule: public_metadata[key] as text (a string as it is, anything else as
    compact JSON with sorted keys), null when absent or empty."""
    value = public_metadata.get(key)
    if value is None or value == "":
        return None
    return (
        value
        if isinstance(value, str)
        else json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    )


def expected_organization(data: dict[str, Any], workspace_key: str = WORKSPACE_KEY) -> dict:
    """The row an organization payload (``data`` of organization.created) should produce."""
    return {
        "id": data["id"],
        "name": data["name"],
        "slug": data["slug"],
        "image_url": data["image_url"],
        "workspace_id": workspace_of(data["public_metadata"], workspace_key),
        "public_metadata": data["public_metadata"],
        "created_by": data["created_by"],
        "max_allowed_memberships": data["max_allowed_memberships"],
        "created_at": data["created_at"],
        "updated_at": data["updated_at"],
    }


def expected_membership(
    data: dict[str, Any],
    user: dict[str, Any] | None = None,
    granted: list[str] | None = None,
) -> dict:
    """The row a membership payload (``data`` of organizationMembership.created) should produce:
    with the member's ``users`` row (``expected_user``) the profile columns come from it, and
    with a stored role holding its key, ``permissions`` are the keys it ``granted``
    (``models.derived``)."""
    member = data["public_user_data"]
    profile = {
        "identifier": member["identifier"],
        "first_name": member["first_name"],
        "last_name": member["last_name"],
        "image_url": member["image_url"],
    }
    if user is not None:
        identifier = [user["primary_email_address"], user["username"], member["identifier"]]
        profile = {
            "identifier": next((value for value in identifier if value is not None), None),
            "first_name": user["first_name"],
            "last_name": user["last_name"],
            "image_url": user["image_url"],
        }
    return {
        "id": data["id"],
        "organization_id": data["organization"]["id"],
        "user_id": member["user_id"],
        "role": data["role"],
        "permissions": data["permissions"] if granted is None else granted,
        "listed_permissions": data["permissions"],
        "identifier": profile["identifier"],
        "listed_identifier": member["identifier"],
        "first_name": profile["first_name"],
        "last_name": profile["last_name"],
        "image_url": profile["image_url"],
        "public_metadata": data["public_metadata"],
        "created_at": data["created_at"],
        "updated_at": data["updated_at"],
    }


def expected_user(data: dict[str, Any]) -> dict:
    """The row a user payload (``data`` of user.created) should produce: the primary email is the
    address ``primary_email_address_id`` names, null when it names none of ``email_addresses``."""
    primary = [
        address["email_address"]
        for address in data["email_addresses"]
        if address["id"] == data["primary_email_address_id"]
    ]
    return {
        "id": data["id"],
        "primary_email_address": primary[0] if primary else None,
        "username": data["username"],
        "first_name": data["first_name"],
        "last_name": data["last_name"],
        "image_url": data["image_url"],
        "external_id": data["external_id"],
        "public_metadata": data["public_metadata"],
        "created_at": data["created_at"],
        "updated_at": data["updated_at"],
    }


def assert_dead_letter(engine: Engine, payload: dict[str, Any], error: str) -> None:
    """Delivering ``payload`` ends ``dead``, its inbox row naming ``error`` (the field at fault)."""
    svix_id = new_svix_id()
    assert deliver(engine, payload, svix_id=svix_id) == "dead"
    row = inbox_row(engine, svix_id)
    assert row is not None
    assert error in row["last_error"]
