"""``permission.*`` events."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from models.locks import EXCLUSIVE, stronger
from models.permissions import PermissionSnapshot, delete_permission, upsert_permission
from models.tombstones import PERMISSION
from models.unit_of_work import UnitOfWork
from workers.handlers.family import EventFamily, TargetSink
from workers.handlers.payloads import (
    Envelope,
    id_in,
    optional,
    require,
    require_event_time,
    require_timestamp,
)


def permission_snapshot(data: Mapping[str, Any], where: str = "data") -> PermissionSnapshot:
    """A Clerk Permission (webhook ``data``, a role's embedded copy, or a Backend API item)."""
    return PermissionSnapshot(
        id=require(data, "id", str, where),
        key=require(data, "key", str, where),
        name=require(data, "name", str, where),
        description=optional(data, "description", str),
        type=optional(data, "type", str),
        created_at=require_timestamp(data, "created_at", where),
        updated_at=require_timestamp(data, "updated_at", where),
    )


def on_permission_upserted(work: UnitOfWork, envelope: Envelope, _workspace_key: str) -> None:
    """``permission.created`` and ``.updated`` are the same upsert: either may arrive first."""
    upsert_permission(work, permission_snapshot(envelope.data))


def on_permission_deleted(work: UnitOfWork, envelope: Envelope, _workspace_key: str) -> None:
    """The payload is a DeletedObject (or, per Clerk's SDK types, the whole permission): its id,
    dated by the envelope."""
    delete_permission(work, require(envelope.data, "id", str, "data"), require_event_time(envelope))


def add_targets(targets: TargetSink, _action: str, data: Mapping[str, Any]) -> None:
    """The roles lock, exclusively, and the permission's tombstone."""
    targets.roles = stronger(targets.roles, EXCLUSIVE)
    if permission_id := id_in(data, "id"):
        targets.tombstones.add((PERMISSION, permission_id))


FAMILY = EventFamily(
    name="permission",
    handlers={
        "created": on_permission_upserted,
        "updated": on_permission_upserted,
        "deleted": on_permission_deleted,
    },
    add_targets=add_targets,
)
