"""Svix signature verification over the raw body, with every configured secret."""

from __future__ import annotations

import binascii
from collections.abc import Callable, Sequence
from enum import Enum

from svix.webhooks import Webhook, WebhookVerificationError

SVIX_HEADERS = ("svix-id", "svix-timestamp", "svix-signature")
STANDARD_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
SIGNING_HEADERS = SVIX_HEADERS + STANDARD_HEADERS
TIMESTAMP_ERRORS = ("Message timestamp too old", "Message timestamp too new")


class Verdict(Enum):
    VALID = "valid"
    MISSING_HEADERS = "missing_headers"
    STALE_TIMESTAMP = "stale_timestamp"
    BAD_SIGNATURE = "bad_signature"


class SignatureVerifier:
    """Tries each secret in turn, so a rotation can run with the old and new secret both valid.

    svix raises ``WebhookVerificationError`` for most failures but plain ``ValueError`` or
    ``binascii.Error`` for a malformed signature header, and ``UnicodeDecodeError`` for a body
    that is not UTF-8: all of them are a bad signature, never a server error.
    """

    def __init__(self, secrets: Sequence[str]) -> None:
        self._webhooks = [Webhook(secret) for secret in secrets]

    def verify(self, body: bytes, header: Callable[[str], str | None]) -> Verdict:
        """``header(name)`` looks a request header up by name, case-insensitively (only the
        six signing headers are read, not every header the request has)."""
        present = {name: value for name in SIGNING_HEADERS if (value := header(name))}
        if not (
            all(present.get(name) for name in SVIX_HEADERS)
            or all(present.get(name) for name in STANDARD_HEADERS)
        ):
            return Verdict.MISSING_HEADERS
        for webhook in self._webhooks:
            try:
                webhook.verify(body, present)
            except WebhookVerificationError as error:
                if str(error) in TIMESTAMP_ERRORS:
                    return Verdict.STALE_TIMESTAMP
                continue
            except (ValueError, binascii.Error):
                # Not ``return``: svix compares the entries in order, so an entry it cannot parse
                # only ends the search for *this* secret; another secret may match an earlier
                # entry (``v1,<new> v1,<junk>`` with secrets old, new).
                continue
            return Verdict.VALID
        return Verdict.BAD_SIGNATURE
