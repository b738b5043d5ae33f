"""What a run reports: the outcome counts per entity type, and the progress hook a caller may
show while it goes."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Protocol

from workers.reconcile.phases import PHASES

OUTCOMES: Final = (
    "created",
    "updated",
    "repaired",
    "unchanged",
    "blocked",
    "invalid",
    "deleted",
    "kept",
)
"""created/updated: written from Clerk's object; repaired: stored at Clerk's version but with
other content (a column gone stale), overwritten with Clerk's; unchanged: already at that
version (and content) or newer;
blocked: listed by Clerk but tombstoned here (or superseded), so not stored; invalid: listed by
Clerk but unreadable (no ``created_at``, say: logged, left alone); deleted: gone from Clerk,
deleted and tombstoned here; kept: missing from the listing but written since the run started,
so left alone."""


@dataclass
class Counts:
    created: int = 0
    updated: int = 0
    repaired: int = 0
    unchanged: int = 0
    blocked: int = 0
    invalid: int = 0
    deleted: int = 0
    kept: int = 0

    def add(self, outcome: str, count: int = 1) -> None:
        setattr(self, outcome, getattr(self, outcome) + count)

    def merge(self, other: Counts) -> None:
        for outcome in OUTCOMES:
            self.add(outcome, getattr(other, outcome))

    def as_dict(self) -> dict[str, int]:
        return {outcome: getattr(self, outcome) for outcome in OUTCOMES}


@dataclass
class ReconcileReport:
    dry_run: bool
    started_at: datetime
    resumed: bool = False
    counts: dict[str, Counts] = field(default_factory=lambda: {p: Counts() for p in PHASES})
    requests: int = 0
    listed: int = 0
    """Objects listed by this session (a resumed run's earlier sessions aside)."""
    seconds: float = 0.0
    """How long this session took."""

    @property
    def rows_per_second(self) -> float:
        return self.listed / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "started_at": self.started_at.isoformat(),
            "resumed": self.resumed,
            "requests": self.requests,
            "listed": self.listed,
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows_per_second, 1),
            "counts": {phase: counts.as_dict() for phase, counts in self.counts.items()},
        }


class Progress(Protocol):
    """What a caller may show while the run goes (a progress bar on a terminal)."""

    def begin(self, phase: str, total: int | None, done: int) -> None: ...

    def advance(self, steps: int) -> None: ...

    def end(self) -> None: ...


class NoProgress:
    def begin(self, phase: str, total: int | None, done: int) -> None:
        pass

    def advance(self, steps: int) -> None:
        pass

    def end(self) -> None:
        pass


class Pace:
    """Rows per second and the time left of one phase's listing, from its start."""

    def __init__(
        self, total: int | None, done: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.total = total
        self.done = done
        self.rows = 0
        self._clock = clock
        self.started = clock()

    def advance(self, rows: int) -> None:
        self.done += rows
        self.rows += rows

    @property
    def seconds(self) -> float:
        return max(self._clock() - self.started, 1e-9)

    @property
    def rate(self) -> float:
        """Rows per second so far."""
        return self.rows / self.seconds

    @property
    def eta(self) -> float | None:
        """Seconds left at the rate so far; None without a total or a rate."""
        if self.total is None or self.rows == 0:
            return None
        return max(0, self.total - self.done) / self.rate

    def describe(self) -> str:
        done = f"{self.done:,}" + (f" of {self.total:,}" if self.total is not None else "")
        eta = self.eta
        left = f", about {eta:,.0f} s left" if eta is not None else ""
        return f"{done} listed, {self.rate:,.0f} rows/s{left}"
