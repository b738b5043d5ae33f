"""Option types (durations, times) and the event filters ``events list`` and ``events replay``
share, turned into a ``models.inbox.EventFilter``."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import click

from models.inbox import STATUSES, EventFilter

DURATION_UNITS: Final = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
DURATION_PATTERN: Final = re.compile(r"^\s*(\d+)\s*([smhdw])\s*$")


def parse_duration(text: str) -> timedelta | None:
    match = DURATION_PATTERN.match(text.lower())
    if match is None:
        return None
    return timedelta(seconds=int(match.group(1)) * DURATION_UNITS[match.group(2)])


class Duration(click.ParamType[timedelta, Any]):
    """``30d``, ``12h``, ``90m``, ``2w``, ``45s``."""

    name = "duration"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> timedelta:
        if isinstance(value, timedelta):
            return value
        duration = parse_duration(str(value))
        if duration is None:
            self.fail(f"{value!r} is not a duration such as 30d, 12h, 90m, 2w or 45s", param, ctx)
        return duration


class Moment(click.ParamType[datetime, Any]):
    """An ISO 8601 date or time (UTC unless it says otherwise), Unix time in seconds or
    milliseconds, or a duration meaning that long ago (``2h``)."""

    name = "time"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> datetime:
        if isinstance(value, datetime):
            return value
        text = str(value).strip()
        duration = parse_duration(text)
        if duration is not None:
            return datetime.now(UTC) - duration
        if text.isdigit():
            number = int(text)
            return datetime.fromtimestamp(number / 1000 if number >= 10**12 else number, UTC)
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            self.fail(
                f"{value!r} is not a time: use ISO 8601 (2026-01-31, 2026-01-31T12:00:00Z), "
                "Unix time, or a duration ago (2h, 7d)",
                param,
                ctx,
            )
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


DURATION = Duration()
MOMENT = Moment()


def filter_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """The filters shared by ``events list`` and ``events replay``."""
    options = [
        click.option(
            "--status",
            "statuses",
            multiple=True,
            type=click.Choice([str(status) for status in STATUSES]),
            help="Only events with this status (repeatable).",
        ),
        click.option(
            "--type",
            "event_types",
            multiple=True,
            metavar="TYPE",
            help="Only this event type, or a prefix ending in * (repeatable).",
        ),
        click.option("--since", type=MOMENT, help="From this time (ISO 8601, Unix, or 2h ago)."),
        click.option("--until", type=MOMENT, help="Before this time."),
        click.option(
            "--time-field",
            type=click.Choice(["received", "event"]),
            default="received",
            show_default=True,
            help="Which time --since/--until apply to: receipt, or the envelope's timestamp.",
        ),
        click.option("--org", "organization_id", metavar="ORG_ID", help="Only this organization."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def build_filter(
    *,
    statuses: Sequence[str] = (),
    event_types: Sequence[str] = (),
    since: datetime | None = None,
    until: datetime | None = None,
    time_field: str = "received",
    organization_id: str | None = None,
    svix_ids: Sequence[str] = (),
) -> EventFilter:
    """The ``EventFilter`` the options describe (repeated ids once each)."""
    return EventFilter(
        svix_ids=tuple(dict.fromkeys(svix_ids)),
        statuses=tuple(statuses),
        event_types=tuple(event_types),
        organization_id=organization_id or None,
        since=since,
        until=until,
        by_event_time=time_field == "event",
    )
