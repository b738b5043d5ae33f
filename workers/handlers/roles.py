"""``role.*`` events."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from models.locks import EXCLUSIVE, stronger
from models.roles import RoleSnapshot, delete_role, upsert_role
from models.tombstones import PERMISSION, ROLE
from models.unit_of_work import UnitOfWork
from workers.handlers.family import EventFamily, TargetSink
from workers.handlers.payloads import (
    Envelope,
    PoisonEventError,
    id_in,
    optional,
    require,
    require_event_time,
    require_timestamp,
)
from workers.handlers.permissions import permission_snapshot

PERMISSIONS_KEY = "permissions"
"""``data.permissions``: the full Permission objects the role grants."""


def role_snapshot(data: Mapping[str, Any], where: str = "data") -> RoleSnapshot:
    """A Clerk Role (webhook ``data`` or a Backend API item), with its embedded permissions."""
    permissions = data.get(PERMISSIONS_KEY, [])
    if not isinstance(permissions, list):
        raise PoisonEventError(f"{where}.{PERMISSIONS_KEY} is not a list")
    creator_eligible = data.get("is_creator_eligible")
    return RoleSnapshot(
        id=require(data, "id", str, where),
        key=require(data, "key", str, where),
        name=require(data, "name", str, where),
        description=optional(data, "description", str),
        is_creator_eligible=creator_eligible if isinstance(creator_eligible, bool) else None,
        permissions=tuple(
            permission_snapshot(*_object(item, f"{where}.{PERMISSIONS_KEY}[{index}]"))
            for index, item in enumerate(permissions)
        ),
        created_at=require_timestamp(data, "created_at", where),
        updated_at=require_timestamp(data, "updated_at", where),
    )


def _object(item: Any, where: str) -> tuple[Mapping[str, Any], str]:
    if not isinstance(item, dict):
        raise PoisonEventError(f"{where} is not an object")
    return item, where


def on_role_upserted(work: UnitOfWork, envelope: Envelope, _workspace_key: str) -> None:
    """``role.created`` and ``.updated`` are the same upsert: either may arrive first."""
    upsert_role(work, role_snapshot(envelope.data))


def on_role_deleted(work: UnitOfWork, envelope: Envelope, _workspace_key: str) -> None:
    """The payload is a DeletedObject (or, per Clerk's SDK types, the whole role): its id,
    dated by the envelope."""
    delete_role(work, require(envelope.data, "id", str, "data"), require_event_time(envelope))


def add_targets(targets: TargetSink, action: str, data: Mapping[str, Any]) -> None:
    """The roles lock, exclusively; the role's tombstone and, unless deleted, its embedded
    permissions' tombstones."""
    targets.roles = stronger(targets.roles, EXCLUSIVE)
    if role_id := id_in(data, "id"):
        targets.tombstones.add((ROLE, role_id))
    permissions = data.get(PERMISSIONS_KEY)
    if action != "deleted" and isinstance(permissions, list):
        for permission in permissions:
            if permission_id := id_in(permission, "id"):
                targets.tombstones.add((PERMISSION, permission_id))


FAMILY = EventFamily(
    name="role",
    handlers={"created": on_role_upserted, "updated": on_role_upserted, "deleted": on_role_deleted},
    add_targets=add_targets,
)
