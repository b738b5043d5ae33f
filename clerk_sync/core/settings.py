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
DEFAULT_CLERK_API_URL = "https://api.clerk.com"


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


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


def parse_clerk_secret_key(raw: str) -> str:
    """``CLERK_SECRET_KEY`` (``sk_test_…``/``sk_live_…``), or "" when unset."""
    key = raw.strip()
    if key and (not key.startswith("sk_") or any(char.isspace() for char in key)):
        raise SettingsError(
            "CLERK_SECRET_KEY: must be a Clerk secret key starting with 'sk_' "
            "(Clerk dashboard → API keys)"
        )
    return key


def parse_clerk_api_url(raw: str) -> str:
    """``CLERK_API_URL`` without a trailing slash; the ``/v1/...`` paths are added to it."""
    url = raw.strip().rstrip("/") or DEFAULT_CLERK_API_URL
    if not re.match(r"^https?://[^/\s]+(/\S*)?$", url):
        raise SettingsError("CLERK_API_URL: expected an http(s) URL such as https://api.clerk.com")
    return url


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


def _optional_int(env: Mapping[str, str], name: str, minimum: int) -> int | None:
    """A whole number of at least ``minimum``, or None when unset or blank."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    return _int(env, name, minimum, minimum)


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
    body_timeout_seconds: float = 10.0
    """The ingress answers 408 when a request body stops arriving for this long."""
    workspace_metadata_key: str = "convexWorkspaceId"
    clerk_secret_key: str = field(default="", repr=False)
    """Backend API key for ``reconcile``; "" when unset. Never logged or printed."""
    clerk_api_url: str = DEFAULT_CLERK_API_URL
    clerk_api_max_requests_per_second: float = 5.0
    reconcile_interval_minutes: int | None = None
    """Beat runs ``reconcile`` this often; None (the default) never does."""
    max_retries: int = 8
    retry_backoff_seconds: float = 2.0
    retry_backoff_max_seconds: float = 120.0
    visibility_timeout_seconds: int = 300
    broker_publish_timeout_seconds: float = 2.0
    db_lock_timeout_ms: int = 10_000
    db_idle_in_transaction_timeout_ms: int = 60_000
    """PostgreSQL ends a worker session left idle inside a transaction this long (a frozen or
    cut-off worker), releasing the organization locks it holds; 0 never does."""
    ledger_redeliver_after_seconds: int = 600
    ledger_sweep_interval_seconds: int = 60
    purge_after_days: int | None = None
    """Beat deletes applied and skipped events older than this; None (the default) never does."""
    log_format: str = "json"
    log_level: str = "INFO"
    worker_metrics_port: int = 9808
    allow_untested_versions: bool = False
    batch_size: int = 100
    """Most events a worker applies in one database transaction; 1 applies them one by one."""
    batch_flush_interval_ms: int = 50
    """Longest an event waits in a worker's buffer for a batch while no pool process is idle."""

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
            body_timeout_seconds=_float(
                env, "CLERK_SYNC_BODY_TIMEOUT_SECONDS", defaults.body_timeout_seconds
            ),
            workspace_metadata_key=env.get("CLERK_SYNC_WORKSPACE_METADATA_KEY", "").strip()
            or defaults.workspace_metadata_key,
            clerk_secret_key=parse_clerk_secret_key(env.get("CLERK_SECRET_KEY", "")),
            clerk_api_url=parse_clerk_api_url(env.get("CLERK_API_URL", "")),
            clerk_api_max_requests_per_second=_float(
                env,
                "CLERK_API_MAX_REQUESTS_PER_SECOND",
                defaults.clerk_api_max_requests_per_second,
            ),
            reconcile_interval_minutes=_optional_int(
                env, "CLERK_SYNC_RECONCILE_INTERVAL_MINUTES", 1
            ),
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
            db_idle_in_transaction_timeout_ms=_int(
                env,
                "CLERK_SYNC_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS",
                defaults.db_idle_in_transaction_timeout_ms,
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
            purge_after_days=_optional_int(env, "CLERK_SYNC_PURGE_AFTER_DAYS", 1),
            log_format=cls._log_format(env),
            log_level=cls._log_level(env),
            worker_metrics_port=_int(
                env, "CLERK_SYNC_WORKER_METRICS_PORT", defaults.worker_metrics_port
            ),
            batch_size=_int(env, "CLERK_SYNC_BATCH_SIZE", defaults.batch_size, 1),
            batch_flush_interval_ms=_int(
                env, "CLERK_SYNC_BATCH_FLUSH_INTERVAL_MS", defaults.batch_flush_interval_ms, 1
            ),
            allow_untested_versions=_flag(env, "CLERK_SYNC_ALLOW_UNTESTED_VERSIONS"),
        )
        settings.check_retry_window()
        settings.check_batch_window()
        return settings

    @staticmethod
    def _log_format(env: Mapping[str, str]) -> str:
        value = env.get("CLERK_SYNC_LOG_FORMAT", "").strip().lower() or "json"
        if value not in ("json", "console"):
            raise SettingsError(
                f"CLERK_SYNC_LOG_FORMAT: expected 'json' or 'console', got {value!r}"
            )
        return value

    @staticmethod
    def _log_level(env: Mapping[str, str]) -> str:
        value = env.get("CLERK_SYNC_LOG_LEVEL", "").strip().upper() or "INFO"
        if value not in LOG_LEVELS:
            raise SettingsError(
                f"CLERK_SYNC_LOG_LEVEL: expected one of {', '.join(LOG_LEVELS)}, got {value!r}"
            )
        return value

    def check_retry_window(self) -> None:
        """A retry countdown longer than the visibility timeout makes Redis redeliver the held
        task to a second worker, so the backoff cap must stay inside it."""
        if self.retry_backoff_max_seconds >= self.visibility_timeout_seconds:
            raise SettingsError(
                "CLERK_SYNC_RETRY_BACKOFF_MAX_SECONDS must be smaller than "
                "CLERK_SYNC_VISIBILITY_TIMEOUT_SECONDS"
            )

    def check_batch_window(self) -> None:
        """Messages a worker holds in its buffer are unacknowledged and count against the
        visibility timeout: the flush interval must stay far below it."""
        if self.batch_flush_interval_ms * 10 > self.visibility_timeout_seconds * 1000:
            raise SettingsError(
                "CLERK_SYNC_BATCH_FLUSH_INTERVAL_MS must be at most a tenth of "
                "CLERK_SYNC_VISIBILITY_TIMEOUT_SECONDS"
            )

    @property
    def batch_flush_interval_seconds(self) -> float:
        return self.batch_flush_interval_ms / 1000

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

    def require_clerk_secret_key(self) -> None:
        """``reconcile`` reads Clerk's Backend API, which needs the instance's secret key."""
        if not self.clerk_secret_key:
            raise SettingsError(
                "CLERK_SECRET_KEY is not set: reconcile reads Clerk's Backend API with the "
                "instance's secret key (sk_...)"
            )
        parse_clerk_secret_key(self.clerk_secret_key)

    @property
    def uses_redis_broker(self) -> bool:
        return self.broker_url.startswith(("redis://", "rediss://", "redis+socket://"))

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]


def _flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise SettingsError(f"{name}: expected 1 or 0 (true or false), got {value!r}")
