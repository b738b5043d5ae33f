"""The outcomes of a queued event, as the worker's pool process reports them to the main
process (which acknowledges, retries or re-queues the message accordingly). The first three are
the inbox's own statuses (``models.events``)."""

from __future__ import annotations

from typing import Final

from models.events import APPLIED, DEAD, SKIPPED

DEFERRED: Final = "deferred"
"""``apply_batch`` without waiting for locks: another transaction holds a lock this event's
mutation takes, so it was left as it was (recorded, not applied) and goes back to the buffer
for a later batch."""
RETRY: Final = "retry"
"""The event failed transiently and was published again with a countdown."""
FAILED: Final = "failed"
"""An unexpected error: logged, and the message acknowledged, as Celery does with a failed task
(the ledger still holds the event)."""
REQUEUE: Final = "requeue"
"""The event could not be handed on (the broker is down): the message goes back on the queue."""
IGNORED: Final = "ignored"
"""A second copy of an event in the same batch whose first copy was retried or failed."""

FINAL_OUTCOMES: Final = frozenset({APPLIED, SKIPPED, DEAD})
"""Outcomes committed for good: the event's ledger entry can go."""

__all__ = [
    "APPLIED",
    "DEAD",
    "DEFERRED",
    "FAILED",
    "FINAL_OUTCOMES",
    "IGNORED",
    "REQUEUE",
    "RETRY",
    "SKIPPED",
]
