"""Reading Clerk payloads into the snapshots ``models`` mutates. A payload that lacks what a
mutation needs is a ``PoisonEventError``: retrying cannot fix it, so it is dead-lettered at once."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from models.organizations import OrganizationSnapshot

SECONDS_THRESHOLD = 10**12
"""Timestamps below this are seconds, not milliseconds (Clerk's catalogue examples use seconds)."""


class PoisonEventError(ValueError):
    """The event can never be applied as sent."""


@dataclass(frozen=True)
class Envelope:
    type: str
    data: Mapping[str, Any]
    timestamp: int | None
    """When the event occurred, in milliseconds."""


def to_milliseconds(value: int) -> int:
    """A Clerk timestamp in milliseconds, whether it came in seconds or milliseconds."""
    return value * 1000 if value < SECONDS_THRESHOLD else value


def read_envelope(document: Any) -> Envelope:
    if not isinstance(document, dict):
        raise PoisonEventError("payload is not a JSON object")
    event_type = document.get("type")
    if not isinstance(event_type, str) or not event_type:
        raise PoisonEventError("payload has no string 'type'")
    data = document.get("data")
    if not isinstance(data, dict):
        data = {}
    timestamp = document.get("timestamp")
    if isinstance(timestamp, bool) or not isinstance(timestamp, int):
        timestamp = None
    return Envelope(
        type=event_type,
        data=data,
        timestamp=None if timestamp is None else to_milliseconds(timestamp),
    )


def require(mapping: Mapping[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = mapping.get(key)
    if not isinstance(value, kind) or isinstance(value, bool) or value == "":
        raise PoisonEventError(f"{where}.{key} is missing or not a {_kind_name(kind)}")
    return value


def optional(mapping: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = mapping.get(key)
    return value if isinstance(value, kind) and not isinstance(value, bool) else None


def id_in(value: Any, key: str) -> str:
    """The string at ``key`` of an object, or "" when ``value`` is no object or holds none there.
    For reading ahead of the handler (locks, lookups), which must never raise."""
    if not isinstance(value, dict):
        return ""
    identifier = value.get(key)
    return identifier if isinstance(identifier, str) else ""


def require_timestamp(mapping: Mapping[str, Any], key: str, where: str) -> int:
    return to_milliseconds(int(require(mapping, key, int, where)))


def require_event_time(envelope: Envelope) -> int:
    """Deletions carry no version of their own: the envelope's time is when they happened."""
    if envelope.timestamp is None:
        raise PoisonEventError(f"{envelope.type} has no envelope 'timestamp'")
    return envelope.timestamp


def organization_snapshot(
    data: Mapping[str, Any], workspace_metadata_key: str, where: str = "data"
) -> OrganizationSnapshot:
    metadata = data.get("public_metadata")
    public_metadata = dict(metadata) if isinstance(metadata, dict) else {}
    workspace = public_metadata.get(workspace_metadata_key)
    return OrganizationSnapshot(
        id=require(data, "id", str, where),
        name=require(data, "name", str, where),
        slug=optional(data, "slug", str),
        image_url=optional(data, "image_url", str),
        workspace_id=metadata_text(workspace),
        public_metadata=public_metadata,
        created_by=optional(data, "created_by", str),
        max_allowed_memberships=optional(data, "max_allowed_memberships", int),
        created_at=require_timestamp(data, "created_at", where),
        updated_at=require_timestamp(data, "updated_at", where),
    )


def metadata_text(value: Any) -> str | None:
    """A metadata value as text: a string as it is, anything else (number, boolean, object,
    list) as compact JSON with sorted keys (``true``, ``42``, ``{"a":1}``), never Python's
    ``str()``; None when absent, null or empty."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(
        {str: "string", int: "integer", dict: "object", list: "list"}.get(k, k.__name__)
        for k in kinds
    )
