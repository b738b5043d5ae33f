"""What a batch is to the pool process that applies it: one ``BatchItem`` per message (read
from the message's arguments, or refused), and the batch runner registered before the pool
forks, which a batch names by key so that it pickles."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from clerk_sync.core.queue import Ledger


@dataclass(frozen=True)
class BatchItem:
    """One message of a batch, as a pool process gets it (it must pickle)."""

    task_id: str
    svix_id: str
    payload: str
    received_at_ms: int
    retries: int


BatchRunner = Callable[[list[BatchItem], bool], list[str]]
"""Applies a batch in a pool process: ``(items, wait_for_locks)`` to one outcome per item."""

_RUNNERS: dict[str, tuple[BatchRunner, Callable[[], Ledger | None]]] = {}
"""Batch runners (and the ledger their events are in) by key, registered before the pool
forks: a batch names its runner, so that it pickles as a key."""


def register_batch_runner(runner: BatchRunner, ledger: Callable[[], Ledger | None]) -> str:
    key = uuid.uuid4().hex
    _RUNNERS[key] = (runner, ledger)
    return key


def run_batch(runner_key: str, items: list[BatchItem], wait_for_locks: bool = True) -> list[str]:
    """Entry point in the pool process."""
    runner, _ledger = _RUNNERS[runner_key]
    return runner(items, wait_for_locks)


def batch_item(request: Any) -> BatchItem | None:
    """The batch item of a Celery request, or None when its arguments are not
    ``(svix_id, payload, received_at_ms)``: such a message is answered as a failed task."""
    try:
        args, kwargs = request.args, request.kwargs
    except Exception:  # noqa: BLE001 - an undecodable body: answered as a failed task
        return None
    if kwargs or not isinstance(args, list | tuple) or len(args) != 3:
        return None
    svix_id, payload, received_at_ms = args
    if (
        not isinstance(svix_id, str)
        or not isinstance(payload, str)
        or not isinstance(received_at_ms, int)
        or isinstance(received_at_ms, bool)
    ):
        return None
    retries = request.request_dict.get("retries") or 0
    return BatchItem(request.id, svix_id, payload, received_at_ms, int(retries))


def runner_ledger(runner_key: str) -> Ledger | None:
    """The ledger of the events a registered runner applies (read in the main process)."""
    return _RUNNERS[runner_key][1]()
