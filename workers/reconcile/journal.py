"""The resume journal (``state_file``): an append-only file of JSON lines holding the run's
start, then one line per page read (phase, next offset, the ids listed, counts), per deletion
candidate checked, and per finished listing and sweep.

Each line is flushed and fsynced before the run moves on, so after an interruption (Ctrl-C, a
crash, Clerk unavailable beyond the retries) the same command continues from the last page it
finished, with the same start time and ids. A torn last line is dropped. The file is removed
when the run completes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final

from workers.reconcile.errors import ReconcileError
from workers.reconcile.phases import PHASES
from workers.reconcile.report import OUTCOMES, Counts
from workers.reconcile.seen import SeenIds

JOURNAL_VERSION: Final = 1


@dataclass
class Checkpoint:
    """Where a run stands; rebuilt from the journal when resuming."""

    started_at: datetime
    dry_run: bool
    api_url: str
    offsets: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PHASES, 0))
    listed: set[str] = field(default_factory=set)
    swept: set[str] = field(default_factory=set)
    seen: dict[str, SeenIds] = field(init=False)
    """The ids listed per phase (compact: ``workers.reconcile.seen``)."""
    checked: dict[str, set[str]] = field(default_factory=lambda: {p: set() for p in PHASES})
    counts: dict[str, Counts] = field(default_factory=lambda: {p: Counts() for p in PHASES})
    resumed: bool = False

    def __post_init__(self) -> None:
        key = self.started_at.isoformat()
        self.seen = {phase: SeenIds(key) for phase in PHASES}

    def apply(self, record: Mapping[str, Any]) -> None:
        kind, phase = record.get("record"), record.get("phase")
        if phase not in PHASES:
            raise ReconcileError(f"state file: unknown phase {phase!r}")
        for outcome, count in record.get("counts", {}).items():
            if outcome in OUTCOMES:
                self.counts[phase].add(outcome, int(count))
        self.seen[phase].update(record.get("ids", ()))
        if kind == "page":
            self.offsets[phase] = int(record["offset"])
        elif kind == "listed":
            self.listed.add(phase)
        elif kind == "checked":
            self.checked[phase].add(str(record["id"]))
        elif kind == "swept":
            self.swept.add(phase)
        else:
            raise ReconcileError(f"state file: unknown record {kind!r}")


class Journal:
    """Append-only JSON lines; every line is on disk before the run goes past what it records.
    Without a path, nothing is written (the run cannot be resumed)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def open(self, *, dry_run: bool, api_url: str, now: datetime) -> Checkpoint:
        """Resume the run the file records, or start one (and record its start)."""
        if self.path is not None and self.path.exists():
            checkpoint = self._read(self.path)
            if checkpoint.dry_run != dry_run:
                mode = "a dry run" if checkpoint.dry_run else "a real run"
                raise ReconcileError(
                    f"state file {self.path} belongs to {mode}: resume it with the same "
                    "--dry-run setting, or delete the file to start over"
                )
            if checkpoint.api_url != api_url:
                raise ReconcileError(
                    f"state file {self.path} belongs to a run against another CLERK_API_URL; "
                    "delete it to start over"
                )
            checkpoint.resumed = True
            return checkpoint
        checkpoint = Checkpoint(started_at=now, dry_run=dry_run, api_url=api_url)
        self.append(
            {
                "record": "start",
                "version": JOURNAL_VERSION,
                "started_at": now.isoformat(),
                "dry_run": dry_run,
                "api_url": api_url,
            }
        )
        return checkpoint

    def append(self, record: Mapping[str, Any]) -> None:
        if self.path is None:
            return
        line = json.dumps(record, separators=(",", ":"), sort_keys=True) + "\n"
        try:
            with self.path.open("a", encoding="utf-8") as stream:
                stream.write(line)
                stream.flush()
                os.fsync(stream.fileno())
        except OSError as error:
            raise ReconcileError(f"state file {self.path}: {error.strerror or error}") from None

    def finish(self) -> None:
        if self.path is not None:
            with suppress(FileNotFoundError):
                self.path.unlink()

    @staticmethod
    def _read(path: Path) -> Checkpoint:
        raw = path.read_bytes()
        lines = raw.split(b"\n")
        if lines and lines[-1] != b"":
            # A line torn by a crash mid-write: drop it (and cut it off, so that the next
            # record starts on a line of its own).
            torn = len(lines[-1])
            with path.open("r+b") as stream:
                stream.truncate(len(raw) - torn)
            lines = lines[:-1]
        records = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError:
                raise ReconcileError(f"state file {path}: line {number} is not JSON") from None
        if not records or records[0].get("record") != "start":
            raise ReconcileError(f"state file {path}: does not start with a run's start")
        start = records[0]
        if start.get("version") != JOURNAL_VERSION:
            raise ReconcileError(f"state file {path}: unknown version {start.get('version')!r}")
        try:
            checkpoint = Checkpoint(
                started_at=datetime.fromisoformat(start["started_at"]),
                dry_run=bool(start["dry_run"]),
                api_url=str(start["api_url"]),
            )
            for record in records[1:]:
                checkpoint.apply(record)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise ReconcileError(f"state file {path}: unreadable ({error!r})") from None
        return checkpoint
