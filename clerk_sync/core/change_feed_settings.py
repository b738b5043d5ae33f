"""The change feed's settings (docs/changes.md), as ``Settings`` fields: the optional fan-out of
every change to the application's own Celery task, and the feed's retention. Kept here so the
settings module stays one screen of everyday settings; each is an ordinary documented field."""

from __future__ import annotations

from dataclasses import field
from typing import Any

from clerk_sync.core.setting_values import documented, optional_whole


def task_field() -> Any:
    """``Settings.changes_task``: the application's task each change is sent to."""
    return field(
        default="",
        metadata=documented(
            "CLERK_SYNC_CHANGES_TASK",
            "the name of the application's Celery task to send every change to (one task per "
            "change, its document the only argument, task id `clerk-sync-change-<id>`; "
            "[change feed](changes.md#fan-out-to-a-celery-task)); empty: no fan-out",
            "— (no fan-out)",
        ),
    )


def queue_field() -> Any:
    """``Settings.changes_queue``: the queue those tasks are sent to."""
    return field(
        default="celery",
        metadata=documented(
            "CLERK_SYNC_CHANGES_QUEUE",
            "the queue the change tasks are sent to (the application's worker consumes it)",
        ),
    )


def broker_url_field() -> Any:
    """``Settings.changes_broker_url``: the application's broker, if not ours."""
    return field(
        default="",
        repr=False,
        metadata=documented(
            "CLERK_SYNC_CHANGES_BROKER_URL",
            "the broker of the application's Celery, if it is not `CELERY_BROKER_URL`",
            "`CELERY_BROKER_URL`",
        ),
    )


def retention_field() -> Any:
    """``Settings.changes_retention_days``: the feed's retention, opt-in."""
    return field(
        default=None,
        metadata=documented(
            "CLERK_SYNC_CHANGES_RETENTION_DAYS",
            "delete changes recorded more than this many days ago (beat, hourly); keep it above "
            "the longest a consumer may stop ([change feed](changes.md#retention))",
            "— (kept for ever)",
            read=optional_whole(1),
        ),
    )
