"""Waiting for changes: PostgreSQL's ``LISTEN clerk_sync_changes`` (the triggers notify when
a transaction with changes commits), or, on SQLite, a short sleep (it has no notifications)."""

from __future__ import annotations

import time
from types import TracebackType
from typing import Any, Final, Self

from sqlalchemy import Connection, Engine, text

from models.changes.triggers import CHANNEL

SQLITE_POLL_SECONDS: Final = 0.5


class ChangeListener:
    """``with ChangeListener(engine) as listener: ... listener.wait(timeout)``. Start listening
    *before* reading the changes, then read, then wait: a change committed in between wakes
    the next ``wait`` at once, so none is slept through."""

    def __init__(self, engine: Engine, poll_seconds: float = SQLITE_POLL_SECONDS) -> None:
        self._engine = engine
        self._poll_seconds = poll_seconds
        self._connection: Connection | None = None

    def __enter__(self) -> Self:
        if self._engine.dialect.name == "postgresql":
            connection = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            connection.execute(text(f"LISTEN {CHANNEL}"))
            self._connection = connection
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def wait(self, timeout: float) -> bool:
        """Block until changes may have been committed, or ``timeout`` seconds pass; returns
        whether woken by a notification (always True on SQLite, after a poll interval)."""
        if self._connection is None:
            time.sleep(min(timeout, self._poll_seconds))
            return True
        driver: Any = self._connection.connection.driver_connection
        woken = False
        for _notification in driver.notifies(timeout=timeout, stop_after=1):
            woken = True
        if woken:
            # Drain what else arrived meanwhile: one read of the feed covers them all.
            for _notification in driver.notifies(timeout=0):
                pass
        return woken
