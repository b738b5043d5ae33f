"""Why an event was dead-lettered, as Flower shows it: its task fails with the error's class and
message (``DeadLetter('PoisonEventError: ...')``), never the payload.

The inbox keeps the whole error (``last_error``, with the traceback of an unexpected one); the
task event carries one line of it: the error's class (without its module) and the first line of
its message, cut short.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Final

from sqlalchemy import Engine, select

from clerk_sync.broker.batch_items import DeadLetter
from models.events import DEAD
from models.tables import webhook_events
from workers.retries import describe_error

log = logging.getLogger("clerk_sync.worker")

REASON_LENGTH: Final = 200
UNKNOWN_REASON: Final = "see clerk-sync events show"

EXCEPTION_LINE: Final = re.compile(
    r"^(?:[A-Za-z_]\w*\.)*(?P<name>[A-Za-z_]\w*(?:Error|Exception|Warning|Exit|Interrupt))"
    r"(?::\s?(?P<message>.*))?$"
)
"""The line of a traceback that names the exception raised: ``module.NameError: message``."""


class DeadLetterError(Exception):
    """Raised by a single-event task whose event was dead-lettered, so that Celery (and Flower)
    report it as failed; the event's outcome is committed already."""


def dead_letter(error: BaseException) -> DeadLetter:
    """The outcome of an event dead-lettered for ``error`` (its retries exhausted)."""
    return DeadLetter(describe_error(error)[:REASON_LENGTH])


def reason_of(last_error: str | None) -> str:
    """One line of an inbox row's ``last_error``: ``Type: message`` (a traceback's last
    exception line), or a pointer to the inbox when none can be found."""
    if not last_error:
        return UNKNOWN_REASON
    lines = [line for line in last_error.splitlines() if line.strip()]
    if not lines[0].startswith("Traceback"):
        return lines[0][:REASON_LENGTH]
    for line in reversed(lines):
        found = EXCEPTION_LINE.match(line)
        if found:
            message = found.group("message")
            reason = found.group("name") + (f": {message}" if message else "")
            return reason[:REASON_LENGTH]
    return UNKNOWN_REASON


def with_reasons(engine: Engine, outcomes: dict[str, str]) -> dict[str, str]:
    """``outcomes`` with each plain ``dead`` replaced by a ``DeadLetter`` carrying the reason
    committed in the inbox: one query, only when a batch has dead letters."""
    missing = [
        svix_id
        for svix_id, outcome in outcomes.items()
        if outcome == DEAD and not isinstance(outcome, DeadLetter)
    ]
    if not missing:
        return outcomes
    reasons = stored_reasons(engine, missing)
    for svix_id in missing:
        outcomes[svix_id] = DeadLetter(reasons.get(svix_id, UNKNOWN_REASON))
    return outcomes


def dead_letter_exception_text(engine: Engine, svix_id: str) -> str:
    """The message of a single-event task's ``DeadLetterError``: the committed reason."""
    return stored_reasons(engine, [svix_id]).get(svix_id, UNKNOWN_REASON)


def stored_reasons(engine: Engine, svix_ids: Iterable[str]) -> dict[str, str]:
    """The reasons of these events, read from the inbox; none if the database fails now (the
    task then fails without one: the inbox has it)."""
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                select(webhook_events.c.svix_id, webhook_events.c.last_error).where(
                    webhook_events.c.svix_id.in_(list(svix_ids))
                )
            ).all()
    except Exception as error:  # noqa: BLE001 - only the task event's text is at stake
        log.warning("dead letters' reasons not read", extra={"error": describe_error(error)})
        return {}
    return {svix_id: reason_of(last_error) for svix_id, last_error in rows}
