"""The settings of ``clerk-sync reconcile``'s Backend API reads (docs/operations.md,
Reconciliation), as ``Settings`` fields. Kept here so the settings module stays one screen of
everyday settings; each is an ordinary documented field."""

from __future__ import annotations

from dataclasses import field
from typing import Any

from clerk_sync.core.setting_values import (
    DEFAULT_CLERK_API_URL,
    documented,
    optional_whole,
    parse_clerk_api_url,
    parse_clerk_secret_key,
    parsed,
    positive,
)


def secret_key_field() -> Any:
    """``Settings.clerk_secret_key``: the instance's Backend API secret key."""
    return field(
        default="",
        repr=False,
        metadata=documented(
            "CLERK_SECRET_KEY",
            "the instance's Backend API secret key `sk_…`, for `clerk-sync reconcile`; sent only "
            "in the `Authorization` header, never logged or printed",
            "— (required by `reconcile`)",
            read=parsed(parse_clerk_secret_key),
        ),
    )


def url_field() -> Any:
    """``Settings.clerk_api_url``: where the Backend API is."""
    return field(
        default=DEFAULT_CLERK_API_URL,
        metadata=documented(
            "CLERK_API_URL",
            "base URL of Clerk's Backend API (`/v1/…` paths are appended)",
            read=parsed(parse_clerk_api_url),
        ),
    )


def rate_field() -> Any:
    """``Settings.clerk_api_max_requests_per_second``: reconcile's share of the rate limit."""
    return field(
        default=5.0,
        metadata=documented(
            "CLERK_API_MAX_REQUESTS_PER_SECOND",
            "cap on `reconcile`'s Backend API request rate (see "
            "[Reconciliation](operations.md#reconciliation))",
            read=positive,
        ),
    )


def interval_field() -> Any:
    """``Settings.reconcile_interval_minutes``: how often beat reconciles, if at all."""
    return field(
        default=None,
        metadata=documented(
            "CLERK_SYNC_RECONCILE_INTERVAL_MINUTES",
            "beat runs `reconcile` this often; unset, it only runs by hand",
            "— (never)",
            read=optional_whole(1),
        ),
    )
