"""Task messages only our own code can make: a keyed MAC (HMAC-SHA256) over a queued event's
arguments ``(svix_id, payload, received_at_ms)``, sent as the task's fourth argument.

Our publishers sign (the ingress after Svix's signature checked out, the ledger sweeper, a
worker's retries, ``events replay``); a worker applies a message only once its MAC checks out
with one of ``CLERK_SYNC_MESSAGE_SECRET``'s secrets, and refuses it as forged otherwise
(Flower's ``async-apply``, anyone who can write to Redis). Several secrets let a rotation run:
the first signs, every one verifies. Why a MAC and not Celery's message signing:
``docs/decisions/0003-message-authentication.md``.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from typing import Final

MAC_LENGTH: Final = 64
"""Hex digits of an HMAC-SHA256."""
SHOWN_ID_LENGTH: Final = 64
"""How much of a forged message's svix id (a forger's choice) logs and Flower show."""


class ForgedMessageError(Exception):
    """A task message whose MAC does not check out: it is never applied."""


class MessageAuthenticator:
    """Signs and verifies queued events' arguments with ``CLERK_SYNC_MESSAGE_SECRET``."""

    def __init__(self, secrets: Sequence[str]) -> None:
        if not secrets:
            raise ValueError("a message authenticator needs at least one secret")
        self._keys = tuple(secret.encode() for secret in secrets)

    def mac(self, svix_id: str, payload: str, received_at_ms: int) -> str:
        """The MAC of these arguments under the first (signing) secret."""
        return _mac(self._keys[0], _signed_text(svix_id, payload, received_at_ms))

    def verify(self, svix_id: object, payload: object, received_at_ms: object, mac: object) -> bool:
        """Whether ``mac`` is the MAC of these arguments under any of the secrets (compared in
        constant time). Arguments of the wrong types (a forger's) are simply not authentic."""
        if (
            not isinstance(mac, str)
            or len(mac) != MAC_LENGTH
            or not isinstance(svix_id, str)
            or not isinstance(payload, str)
            or not isinstance(received_at_ms, int)
            or isinstance(received_at_ms, bool)
        ):
            return False
        text = _signed_text(svix_id, payload, received_at_ms)
        expected = mac.encode()
        # Every key is tried, whatever the outcome: the time taken does not say which matched.
        matches = [hmac.compare_digest(_mac(key, text).encode(), expected) for key in self._keys]
        return any(matches)


def _signed_text(svix_id: str, payload: str, received_at_ms: int) -> bytes:
    """The arguments in one unambiguous byte string: the svix id's length first, so that no
    other triple of arguments gives the same bytes."""
    svix_id_bytes = svix_id.encode("utf-8", "surrogatepass")
    head = f"clerk-sync/v1:{len(svix_id_bytes)}:".encode()
    tail = f":{received_at_ms}:".encode()
    return b"".join((head, svix_id_bytes, tail, payload.encode("utf-8", "surrogatepass")))


def _mac(key: bytes, text: bytes) -> str:
    return hmac.digest(key, text, "sha256").hex()


def forged_argsrepr(svix_id: object) -> str:
    """What Celery's failure line and Flower show of a forged message's arguments: the svix id
    it claims, cut short, and never its payload."""
    shown = svix_id[:SHOWN_ID_LENGTH] if isinstance(svix_id, str) else None
    return f"({shown!r}, <forged message, not applied>)"
