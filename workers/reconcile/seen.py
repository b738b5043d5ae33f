"""The ids a run has listed, kept compact: the deletion phase asks, for every stored row,
whether Clerk listed it, and a set of a million id strings would take over 100 MB.

Each id is kept as a 64-bit keyed hash (BLAKE2b, keyed by the run's start, which the journal
keeps, so a resumed run hashes alike): 8 bytes an id, in sorted arrays. Two ids with the same
hash (about one chance in 10^7 with a million ids) make an unlisted row look listed: it is
kept, never wrongly deleted, and the next run, keyed differently, looks at it again.
"""

from __future__ import annotations

import heapq
from array import array
from bisect import bisect_left
from collections.abc import Iterable
from hashlib import blake2b


class SeenIds:
    """A set of ids that can only grow, then be asked about (``in``)."""

    def __init__(self, key: str) -> None:
        self._key = key.encode()[:64]
        self._sorted = array("Q")
        self._runs: list[array[int]] = []
        """Sorted runs added since the last question, merged in at the next."""

    def update(self, ids: Iterable[str]) -> None:
        run = array("Q", sorted(self._hash(value) for value in ids))
        if run:
            self._runs.append(run)

    def __contains__(self, value: object) -> bool:
        if not isinstance(value, str):
            return False
        if self._runs:
            self._sorted = array("Q", heapq.merge(self._sorted, *self._runs))
            self._runs.clear()
        hashed = self._hash(value)
        index = bisect_left(self._sorted, hashed)
        return index < len(self._sorted) and self._sorted[index] == hashed

    def __len__(self) -> int:
        """Ids added (an id listed twice counts twice)."""
        return len(self._sorted) + sum(len(run) for run in self._runs)

    def _hash(self, value: str) -> int:
        digest = blake2b(value.encode(), digest_size=8, key=self._key).digest()
        return int.from_bytes(digest, "little")
