"""Short retries of a whole transaction on a transient database error, in the process that met
it: the worker's events and batches, reconcile's pages, the operator's bulk work (``rebuild``,
``events replay``). After these, an event goes to Celery's backed-off retries."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, TypeVar

from tenacity import retry, retry_if_exception, stop_after_attempt, wait_random_exponential

from models.database import is_transient

T = TypeVar("T")

IN_PROCESS_ATTEMPTS: Final = 3
"""Attempts in all, the first included."""


def retry_transient(function: Callable[..., T]) -> Callable[..., T]:
    """``function`` run again, up to ``IN_PROCESS_ATTEMPTS`` times in all, when it fails with a
    transient database error (a dropped connection, a deadlock victim, a lock wait beyond
    ``lock_timeout``); any other error, or the last one, is raised."""
    return retry(
        retry=retry_if_exception(is_transient),
        stop=stop_after_attempt(IN_PROCESS_ATTEMPTS),
        wait=wait_random_exponential(multiplier=0.05, max=1.0),
        reraise=True,
    )(function)


def describe_error(error: BaseException) -> str:
    """``Type: first line of the message``, for logs and the inbox (never a payload)."""
    text = str(error)
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"
