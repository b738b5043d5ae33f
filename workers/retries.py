"""Short retries of a whole transaction on a transient database error, for the operator's bulk
work (``rebuild``, ``events replay``): the same attempts as the worker's own."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from tenacity import retry, retry_if_exception, stop_after_attempt, wait_random_exponential

from models.database import is_transient
from workers.processing import IN_PROCESS_ATTEMPTS

T = TypeVar("T")


def retry_transient(function: Callable[..., T]) -> Callable[..., T]:
    """``function`` run again, up to ``IN_PROCESS_ATTEMPTS`` times in all, when it fails with a
    transient database error (a dropped connection, a deadlock victim, a lock wait beyond
    ``lock_timeout``); any other error, or the last one, is raised."""
    return retry(
        retry=retry_if_exception(is_transient),
        stop=stop_after_attempt(IN_PROCESS_ATTEMPTS),
        wait=wait_random_exponential(multiplier=0.1, max=2.0),
        reraise=True,
    )(function)
