"""Reading a listing ahead of the writes: pages are fetched by a few threads while the run
writes the ones before them, and handed over in order.

Offset paging knows every page's offset in advance (each is ``limit`` after the previous one),
so up to ``ahead`` requests are in flight at once: the rate limiter still spaces them, and
Clerk's answer time overlaps with the database's. Up to the expected total (``total_count``, or
``/v1/users/count``), pages are asked for in parallel; past it, one at a time, until a page comes
back short, which ends the listing (as a listing read one page at a time ends). Pages after a
short one are dropped unread. Each page is also read (``fetch`` may parse it: the threads do
that work while the run waits on the database). Daemon threads: an interrupted run never waits
for them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Final, Generic, TypeVar

T = TypeVar("T")

DEFAULT_AHEAD: Final = 4
"""Requests in flight at most: enough to keep the writes busy at Clerk's answer times of a few
hundred milliseconds, few enough that an interrupted run wastes little."""


class _Slot(Generic[T]):
    def __init__(self) -> None:
        self.page: T | None = None
        self.error: BaseException | None = None
        self.done = False


class Prefetcher(Generic[T]):
    """The pages of one listing from ``offset`` on, in order (``pages()``); ``fetch(offset)``
    reads one, ``size`` tells how many objects it holds, ``expected`` how many the listing
    holds (from the first page), if known."""

    def __init__(
        self,
        fetch: Callable[[int], T],
        *,
        offset: int,
        page_size: int,
        size: Callable[[T], int],
        expected: Callable[[T], int | None],
        ahead: int = DEFAULT_AHEAD,
    ) -> None:
        self._fetch = fetch
        self._size = size
        self._start = offset
        self._page_size = page_size
        self._expected = expected
        self._ahead = max(1, ahead)
        self._condition = threading.Condition()
        self._slots: dict[int, _Slot[T]] = {}
        self._next_offset = offset
        self._limit: int | None = None
        """Offsets below this may be asked for ahead; None until the first page says."""
        self._stopped = False

    def pages(self) -> Iterator[T]:
        """Each page in order, until a short one (included); raises what fetching raised."""
        offset = self._start
        try:
            first = self._fetch(offset)
            total = self._expected(first)
            with self._condition:
                self._limit = total if total is not None else offset
                self._next_offset = offset + self._page_size
                self._start_threads()
            page = first
            while True:
                yield page
                if self._size(page) < self._page_size:
                    return
                offset += self._page_size
                page = self._take(offset)
        finally:
            self.stop()

    def stop(self) -> None:
        with self._condition:
            self._stopped = True
            self._condition.notify_all()

    # -- internals ---------------------------------------------------------------------------

    def _start_threads(self) -> None:
        for number in range(self._ahead):
            threading.Thread(
                target=self._work, name=f"reconcile-fetch-{number}", daemon=True
            ).start()

    def _take(self, offset: int) -> T:
        with self._condition:
            ahead = offset in self._slots or (self._limit is not None and offset < self._limit)
        if not ahead:
            # Past the expected total: asked for now, by the caller, one at a time.
            return self._fetch(offset)
        with self._condition:
            while offset not in self._slots or not self._slots[offset].done:
                self._condition.wait()
            slot = self._slots.pop(offset)
            self._condition.notify_all()  # a slot freed: a thread may read further ahead
        if slot.error is not None:
            raise slot.error
        assert slot.page is not None
        return slot.page

    def _work(self) -> None:
        while True:
            with self._condition:
                while not self._stopped and not self._may_read_ahead():
                    self._condition.wait()
                if self._stopped:
                    return
                offset = self._next_offset
                self._next_offset += self._page_size
                slot = self._slots[offset] = _Slot[T]()
            try:
                slot.page = self._fetch(offset)
            except Exception as error:  # noqa: BLE001 - handed to the reader, which raises it
                slot.error = error
            with self._condition:
                slot.done = True
                self._condition.notify_all()
                if slot.error is not None:
                    return

    def _may_read_ahead(self) -> bool:
        return (
            self._limit is not None
            and self._next_offset < self._limit
            and len(self._slots) < self._ahead
        )
