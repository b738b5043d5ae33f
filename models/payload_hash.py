"""The payload's fingerprint, the same in every process: the ingress's accept transaction
compares it to tell a copy of an event from a different body under the same svix id, and
``webhook_events.payload_hash`` keeps it. Imports nothing else of ``models``: the ingress uses
it without the database layer."""

from __future__ import annotations

import hashlib


def payload_hash(payload: str) -> str:
    """The SHA-256 of the payload's UTF-8 text, in hex (64 characters)."""
    return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()
