"""The worker's side of message authentication: a task message (or a ledger entry) is applied
only if its MAC checks out (``clerk_sync.core.message_auth``); one that does not is forged, and
is recorded as such (a counter and a log line naming its task and svix ids, never its payload)
and never applied.

Forged messages get no inbox row: the inbox is keyed by svix id, and a forger picks the svix id,
so a row of its own would let a forged message take (or shadow) the row of a genuine event with
that id; the payload is a stranger's and is not stored either.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter

from clerk_sync.core.message_auth import SHOWN_ID_LENGTH, MessageAuthenticator
from clerk_sync.core.settings import Settings

log = logging.getLogger("clerk_sync.worker")

SOURCES: Final = ("queue", "ledger")
"""Where a forged message was found: a task message, or a ledger entry the sweeper read."""


class MessageCheck:
    """Checks the MAC of each message a worker receives (``check_message``) and of each ledger
    entry its sweeper would publish again (``check_entry``)."""

    def __init__(self, settings: Settings, registry: Callable[[], CollectorRegistry]) -> None:
        self._secrets = settings.message_secrets
        self._registry = registry

    @cached_property
    def authenticator(self) -> MessageAuthenticator | None:
        """None without ``CLERK_SYNC_MESSAGE_SECRET`` (``clerk-sync worker`` refuses to start
        then): every message is refused."""
        return MessageAuthenticator(self._secrets) if self._secrets else None

    @cached_property
    def forged(self) -> Counter:
        counter = Counter(
            "clerk_sync_worker_forged_messages",
            "Task messages (queue) and ledger entries (ledger) refused because their MAC did "
            "not check out: never applied.",
            ["source"],
            registry=self._registry(),
        )
        for source in SOURCES:
            counter.labels(source)
        return counter

    def check_message(self, task_id: str, args: Sequence[Any] | None) -> bool:
        """Whether a task message's positional arguments are ``(svix_id, payload,
        received_at_ms, mac)`` with a valid MAC; if not, it is recorded as forged."""
        if args is not None and len(args) == 4 and self._authentic(*args):
            return True
        svix_id = args[0] if args else None
        reason = "unsigned" if args is None or len(args) != 4 or not args[3] else "bad_mac"
        self.record(task_id, svix_id, reason, "queue")
        return False

    def check_entry(self, svix_id: str, payload: str, received_at_ms: int, mac: str) -> bool:
        """Whether a ledger entry's MAC is valid; if not, it is recorded as forged."""
        if self._authentic(svix_id, payload, received_at_ms, mac):
            return True
        self.record(None, svix_id, "bad_mac" if mac else "unsigned", "ledger")
        return False

    def _authentic(self, svix_id: Any, payload: Any, received_at_ms: Any, mac: Any) -> bool:
        authenticator = self.authenticator
        return authenticator is not None and authenticator.verify(
            svix_id, payload, received_at_ms, mac
        )

    def record(self, task_id: str | None, svix_id: object, reason: str, source: str) -> None:
        """The counter and one log line, with the ids (the svix id cut short: a forger's
        choice) and never the payload."""
        self.forged.labels(source).inc()
        log.error(
            "forged task message refused, not applied",
            extra={
                "task_id": task_id,
                "svix_id": svix_id[:SHOWN_ID_LENGTH] if isinstance(svix_id, str) else None,
                "reason": reason,
                "source": source,
            },
        )
