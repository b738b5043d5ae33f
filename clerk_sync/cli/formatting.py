"""How the operator commands print times, ages, errors, tables and events."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

from models.inbox import StoredEvent

ERROR_WIDTH: Final = 60


def iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def short_time(moment: datetime | None) -> str:
    if moment is None:
        return "-"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def event_time(event: StoredEvent) -> datetime | None:
    """The envelope's timestamp as a time, None when absent or out of range."""
    if event.event_timestamp is None:
        return None
    try:
        return datetime.fromtimestamp(event.event_timestamp / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def age(moment: datetime | None, now: datetime) -> str:
    """``3d 4h``, ``12m 5s``: the two largest units of the time since ``moment``."""
    if moment is None:
        return "-"
    seconds = max(0, int((now - moment).total_seconds()))
    parts = []
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    if seconds or not parts:
        parts.append(f"{seconds}s")
    return " ".join(parts[:2])


def error_summary(error: str | None) -> str:
    """One line: the exception at the end of a traceback, else the message's first line."""
    if not error:
        return ""
    lines = [line.strip() for line in error.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    line = lines[-1] if lines[0].startswith("Traceback") else lines[0]
    return line if len(line) <= ERROR_WIDTH else line[: ERROR_WIDTH - 1] + "…"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, with a header line."""
    widths = [
        max([len(header), *(len(row[index]) for row in rows)])
        for index, header in enumerate(headers)
    ]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))

    return "\n".join(line(cells).rstrip() for cells in [headers, *rows])


def event_json(event: StoredEvent, *, with_payload: bool = False) -> dict[str, Any]:
    document: dict[str, Any] = {
        "svix_id": event.svix_id,
        "event_type": event.event_type,
        "status": event.status,
        "organization_id": event.organization_id,
        "attempts": event.attempts,
        "replay_count": event.replay_count,
        "last_replayed_at": iso(event.last_replayed_at),
        "event_timestamp": event.event_timestamp,
        "event_time": iso(event_time(event)),
        "received_at": iso(event.received_at),
        "processed_at": iso(event.processed_at),
        "last_error": event.last_error,
    }
    if with_payload:
        document["payload"] = event.payload
    return document


EVENT_HEADERS: Final = (
    "RECEIVED (UTC)",
    "SVIX ID",
    "TYPE",
    "STATUS",
    "TRIES",
    "REPLAYS",
    "ORGANIZATION",
    "EVENT TIME (UTC)",
    "ERROR",
)


def event_table(events: Sequence[StoredEvent]) -> str:
    return table(
        EVENT_HEADERS,
        [
            (
                short_time(event.received_at),
                event.svix_id,
                event.event_type or "-",
                event.status,
                str(event.attempts),
                str(event.replay_count),
                event.organization_id or "-",
                short_time(event_time(event)),
                error_summary(event.last_error),
            )
            for event in events
        ],
    )


def pretty_payload(payload: str | None) -> str:
    """The stored payload indented, or as stored if it is not JSON."""
    if payload is None:
        return ""
    try:
        return json.dumps(json.loads(payload), indent=2, ensure_ascii=False)
    except (ValueError, RecursionError):
        return payload
