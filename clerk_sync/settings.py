"""The one settings object, read from the environment once at start-up.

Every process (ingress, worker, CLI) builds a ``Settings`` with ``Settings.from_env()`` and passes
it down; nothing else reads ``os.environ``. Validation errors are ``SettingsError`` with a message
fit to print as the single line an operator sees.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Self

DEFAULT_DATABASE_URL = "sqlite:///clerk-sync.db"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable, never its value."""


def parse_webhook_secrets(raw: str) -> tuple[str, ...]:
    """Split ``CLERK_WEBHOOK_SECRET`` into secrets and check each is a ``whsec_`` base64 key.

    Several secrets (separated by spaces or commas) let a rotation run with old and new valid.
    """
    secrets = tuple(part for part in re.split(r"[\s,]+", raw.strip()) if part)
    for position, secret in enumerate(secrets, start=1):
        check_webhook_secret(position, secret)
    return secrets


def check_webhook_secret(position: int, secret: str) -> None:
    """Raise ``SettingsError`` unless ``secret`` is a ``whsec_`` base64 key of 16+ bytes.

    Split out of ``parse_webhook_secrets`` so that ``Settings.require_webhook_secrets`` applies
    the same check to settings built in code: svix would otherwise accept ``"abc"`` as a key, or
    fail on ``"whsec_"`` with its own ``EmptyWebhookSecretError`` instead of a ``SettingsError``.
    """
    if not secret.startswith("whsec_"):
        raise SettingsError(
            f"CLERK_WEBHOOK_SECRET: secret #{position} must start with 'whsec_' "
            "(copy the Signing Secret from the Clerk dashboard endpoint page)"
        )
    body = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) < 16:
        raise SettingsError(
            f"CLERK_WEBHOOK_SECRET: secret #{position} is not a valid 'whsec_' base64 key"
        )


def normalise_database_url(url: str) -> str:
    """Route plain PostgreSQL URLs to psycopg 3, the driver we install."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected a whole number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name}: must be at least {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected a number, got {raw!r}") from None
    if value <= 0:
        raise SettingsError(f"{name}: must be greater than 0, got {value}")
    return value


@dataclass(frozen=True)
class Settings:
    """Everything configurable, with production-sane defaults (see README, "Configuration")."""

    webhook_secrets: tuple[str, ...] = field(default=(), repr=False)
    database_url: str = DEFAULT_DATABASE_URL
    broker_url: str = DEFAULT_BROKER_URL
    broker_filesystem_dir: str = ".clerk-sync-broker"
    queue_name: str = "clerk-sync"
    max_body_bytes: int = 1024 * 1024
    workspace_metadata_key: str = "convexWorkspaceId"
    max_retries: int = 8
    retry_backoff_seconds: float = 2.0
    retry_backoff_max_seconds: float = 120.0
    visibility_timeout_seconds: int = 300
    broker_publish_timeout_seconds: float = 2.0
    db_lock_timeout_ms: int = 10_000
    ledger_redeliver_after_seconds: int = 600
    ledger_sweep_interval_seconds: int = 60

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        env = os.environ if env is None else env
        defaults = cls()
        settings = cls(
            webhook_secrets=parse_webhook_secrets(env.get("CLERK_WEBHOOK_SECRET", "")),
            database_url=normalise_database_url(
                env.get("DATABASE_URL", "").strip() or DEFAULT_DATABASE_URL
            ),
            broker_url=env.get("CELERY_BROKER_URL", "").strip() or DEFAULT_BROKER_URL,
            broker_filesystem_dir=env.get("CLERK_SYNC_BROKER_DIR", "").strip()
            or defaults.broker_filesystem_dir,
            queue_name=env.get("CLERK_SYNC_QUEUE", "").strip() or defaults.queue_name,
            max_body_bytes=_int(env, "CLERK_SYNC_MAX_BODY_BYTES", defaults.max_body_bytes, 1),
            workspace_metadata_key=env.get("CLERK_SYNC_WORKSPACE_METADATA_KEY", "").strip()
            or defaults.workspace_metadata_key,
            max_retries=_int(env, "CLERK_SYNC_MAX_RETRIES", defaults.max_retries),
            retry_backoff_seconds=_float(
                env, "CLERK_SYNC_RETRY_BACKOFF_SECONDS", defaults.retry_backoff_seconds
            ),
            retry_backoff_max_seconds=_float(
                env, "CLERK_SYNC_RETRY_BACKOFF_MAX_SECONDS", defaults.retry_backoff_max_seconds
            ),
            visibility_timeout_seconds=_int(
                env,
                "CLERK_SYNC_VISIBILITY_TIMEOUT_SECONDS",
                defaults.visibility_timeout_seconds,
                1,
            ),
            broker_publish_timeout_seconds=_float(
                env,
                "CLERK_SYNC_BROKER_PUBLISH_TIMEOUT_SECONDS",
                defaults.broker_publish_timeout_seconds,
            ),
            db_lock_timeout_ms=_int(
                env, "CLERK_SYNC_DB_LOCK_TIMEOUT_MS", defaults.db_lock_timeout_ms
            ),
            ledger_redeliver_after_seconds=_int(
                env,
                "CLERK_SYNC_LEDGER_REDELIVER_AFTER_SECONDS",
                defaults.ledger_redeliver_after_seconds,
                1,
            ),
            ledger_sweep_interval_seconds=_int(
                env,
                "CLERK_SYNC_LEDGER_SWEEP_INTERVAL_SECONDS",
                defaults.ledger_sweep_interval_seconds,
                1,
            ),
        )
        settings.check_retry_window()
        return settings

    def check_retry_window(self) -> None:
        """A retry countdown longer than the visibility timeout makes Redis redeliver the held
        task to a second worker, so the backoff cap must stay inside it."""
        if self.retry_backoff_max_seconds >= self.visibility_timeout_seconds:
            raise SettingsError(
                "CLERK_SYNC_RETRY_BACKOFF_MAX_SECONDS must be smaller than "
                "CLERK_SYNC_VISIBILITY_TIMEOUT_SECONDS"
            )

    def require_webhook_secrets(self) -> None:
        """At least one secret, each well-formed (also when ``Settings`` was built in code and
        never went through ``parse_webhook_secrets``)."""
        if not self.webhook_secrets:
            raise SettingsError(
                "CLERK_WEBHOOK_SECRET is not set: the ingress cannot verify webhooks without the "
                "endpoint's Signing Secret (whsec_...)"
            )
        for position, secret in enumerate(self.webhook_secrets, start=1):
            check_webhook_secret(position, secret)

    @property
    def uses_redis_broker(self) -> bool:
        return self.broker_url.startswith(("redis://", "rediss://", "redis+socket://"))

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]
