"""What a run reports: the outcome counts per entity type, and the progress hook a caller may
show while it goes."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final, Protocol

from workers.reconcile.phases import PHASES

OUTCOMES: Final = ("created", "updated", "unchanged", "blocked", "invalid", "deleted", "kept")
"""created/updated: written from Clerk's object; unchanged: already at that version or newer;
blocked: listed by Clerk but tombstoned here (or superseded), so not stored; invalid: listed by
Clerk but unreadable (no ``created_at``, say: logged, left alone); deleted: gone from Clerk,
deleted and tombstoned here; kept: missing from the listing but written since the run started,
so left alone."""


@dataclass
class Counts:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    blocked: int = 0
    invalid: int = 0
    deleted: int = 0
    kept: int = 0

    def add(self, outcome: str, count: int = 1) -> None:
        setattr(self, outcome, getattr(self, outcome) + count)

    def as_dict(self) -> dict[str, int]:
        return {outcome: getattr(self, outcome) for outcome in OUTCOMES}


@dataclass
class ReconcileReport:
    dry_run: bool
    started_at: datetime
    resumed: bool = False
    counts: dict[str, Counts] = field(default_factory=lambda: {p: Counts() for p in PHASES})
    requests: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "started_at": self.started_at.isoformat(),
            "resumed": self.resumed,
            "requests": self.requests,
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
