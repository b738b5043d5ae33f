"""What a batch is to the pool process that applies it: one ``BatchItem`` per message (read
from the message's arguments once their MAC checked out, or refused as forged), the batch runner
registered before the pool forks, which a batch names by key so that it pickles, and the
outcome a dead-lettered event comes back with (``DeadLetter``)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from clerk_sync.core.queue import Ledger
from models.events import EventStatus


@dataclass(frozen=True)
class BatchItem:
    """One message of a batch, as a pool process gets it (it must pickle)."""

    task_id: str
    svix_id: str
    payload: str
    received_at_ms: int
    retries: int


class DeadLetter(str):
    """The outcome ``dead`` (equal to ``EventStatus.DEAD``), with why: the error's class and
    message, never the payload. The worker's main process reports it as a failed task."""

    reason: str

    def __new__(cls, reason: str) -> DeadLetter:
        outcome = super().__new__(cls, EventStatus.DEAD.value)
        outcome.reason = reason
        return outcome

    def __reduce__(self) -> tuple[Any, ...]:
        return (DeadLetter, (self.reason,))


BatchRunner = Callable[[list[BatchItem], bool], list[str]]
"""Applies a batch in a pool process: ``(items, wait_for_locks)`` to one outcome per item."""

MessageCheck = Callable[[str, Sequence[Any] | None], bool]
"""Whether a message's arguments (task id, positional arguments or None when unreadable) are
authentic; a message that is not has been recorded as forged, and is never applied."""

_RUNNERS: dict[str, tuple[BatchRunner, Callable[[], Ledger | None], MessageCheck]] = {}
"""Batch runners (with the ledger their events are in and the check their messages pass) by
key, registered before the pool forks: a batch names its runner, so that it pickles as a key."""


def register_batch_runner(
    runner: BatchRunner, ledger: Callable[[], Ledger | None], check: MessageCheck
) -> str:
    key = uuid.uuid4().hex
    _RUNNERS[key] = (runner, ledger, check)
    return key


def run_batch(runner_key: str, items: list[BatchItem], wait_for_locks: bool = True) -> list[str]:
    """Entry point in the pool process."""
    runner, _ledger, _check = _RUNNERS[runner_key]
    return runner(items, wait_for_locks)


def message_args(request: Any) -> Sequence[Any] | None:
    """A Celery request's positional arguments, or None when its body cannot be read or it has
    keyword arguments (no message of ours has)."""
    try:
        args, kwargs = request.args, request.kwargs
    except Exception:  # noqa: BLE001 - an undecodable body: refused
        return None
    if kwargs or not isinstance(args, list | tuple):
        return None
    return args


def batch_item(request: Any, args: Sequence[Any]) -> BatchItem:
    """The batch item of a Celery request whose arguments ``(svix_id, payload, received_at_ms,
    mac)`` passed the message check (which checked their types)."""
    svix_id, payload, received_at_ms, _mac = args
    retries = request.request_dict.get("retries") or 0
    return BatchItem(request.id, svix_id, payload, received_at_ms, int(retries))


def runner_ledger(runner_key: str) -> Ledger | None:
    """The ledger of the events a registered runner applies (read in the main process)."""
    return _RUNNERS[runner_key][1]()


def runner_check(runner_key: str) -> MessageCheck:
    """The check a registered runner's messages pass before they are batched."""
    return _RUNNERS[runner_key][2]
