"""Reconciliation with Clerk's Backend API: heal what webhooks missed.

A run lists every permission, role, organization, user, membership, invitation and domain from
Clerk (``phases``), reading pages ahead (``prefetch``) and writing each page in one transaction
with the webhooks' mutation rules (``pages``), repairing content drift; then it deletes what
Clerk no longer has, behind guards (``reconciler``, ``checks``). Its progress goes to a journal
it resumes from (``journal``, ``seen``); Clerk is read rate-limited and retried (``clerk_api``).
This module holds the entry points: the command's and beat's.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any, Final

from sqlalchemy import Engine

from clerk_sync.core.settings import Settings, SettingsError
from workers.reconcile.clerk_api import ClerkAPI, RateLimiter, parse_retry_after
from workers.reconcile.errors import (
    ClerkAPIError,
    ClerkUnavailableError,
    MassDeletionError,
    ReconcileBusyError,
    ReconcileError,
)
from workers.reconcile.reconciler import RUN_LOCK, reconcile
from workers.reconcile.report import OUTCOMES, Counts, ReconcileReport

__all__ = [
    "OUTCOMES",
    "RECONCILE_TASK",
    "RUN_LOCK",
    "ClerkAPI",
    "ClerkAPIError",
    "ClerkUnavailableError",
    "Counts",
    "MassDeletionError",
    "RateLimiter",
    "ReconcileBusyError",
    "ReconcileError",
    "ReconcileReport",
    "api_for",
    "parse_retry_after",
    "reconcile",
    "reconcile_schedule",
    "reconcile_with_settings",
    "scheduled_reconcile",
]

log = logging.getLogger("clerk_sync.reconcile")

RECONCILE_TASK: Final = "clerk_sync.reconcile"


def api_for(settings: Settings) -> ClerkAPI:
    settings.require_clerk_secret_key()
    return ClerkAPI(
        settings.clerk_api_url,
        settings.clerk_secret_key,
        max_requests_per_second=settings.clerk_api_max_requests_per_second,
    )


def reconcile_with_settings(
    engine: Engine, settings: Settings, api: ClerkAPI | None = None, **options: Any
) -> ReconcileReport:
    """``reconcile`` configured from ``settings`` (``CLERK_API_URL``, ``CLERK_SECRET_KEY``, the
    request rate, the workspace key). Raises ``SettingsError`` without a secret key."""
    owned = api is None
    api = api_for(settings) if api is None else api
    try:
        return reconcile(
            engine,
            api,
            api_url=settings.clerk_api_url,
            workspace_key=settings.workspace_metadata_key,
            **options,
        )
    finally:
        if owned:
            api.close()


def reconcile_schedule(settings: Settings) -> dict[str, Any]:
    """Beat's entry, when ``CLERK_SYNC_RECONCILE_INTERVAL_MINUTES`` is set (off by default).
    A run still queued when the next one is due expires rather than pile up."""
    if settings.reconcile_interval_minutes is None:
        return {}
    interval = timedelta(minutes=settings.reconcile_interval_minutes)
    return {
        "reconcile": {
            "task": RECONCILE_TASK,
            "schedule": interval,
            "options": {"expires": interval.total_seconds()},
        }
    }


def scheduled_reconcile(engine: Engine, settings: Settings) -> dict[str, Any] | None:
    """What beat's task runs: one whole run (no state file: the next scheduled run starts over),
    skipped if another is in progress. Failures are logged, not raised: the next run retries."""
    try:
        report = reconcile_with_settings(engine, settings)
    except SettingsError as error:
        log.error("scheduled reconcile not run: %s", error)
        return None
    except ReconcileBusyError:
        log.info("scheduled reconcile skipped: another run is in progress")
        return None
    except ReconcileError as error:
        log.error("scheduled reconcile failed: %s", error)
        return None
    return report.as_dict()
