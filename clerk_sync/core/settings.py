"""The one settings object, read from the environment once at start-up.

Every process (ingress, worker, CLI) builds a ``Settings`` with ``Settings.from_env()`` and passes
it down; nothing else reads ``os.environ``. Validation errors are ``SettingsError`` with a message
fit to print as the single line an operator sees. How each value is parsed and documented is in
``clerk_sync.core.setting_values``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Self

from clerk_sync.core.setting_values import (
    DEFAULT_BROKER_URL,
    DEFAULT_CLERK_API_URL,
    DEFAULT_DATABASE_URL,
    LOG_LEVELS,
    SETTING,
    Setting,
    SettingsError,
    check_webhook_secret,
    documented,
    flag,
    normalise_database_url,
    optional_whole_number,
    parse_clerk_api_url,
    parse_clerk_secret_key,
    parse_message_secrets,
    parse_webhook_secrets,
    positive_number,
    whole_number,
)

__all__ = ["SETTING", "Setting", "Settings", "SettingsError", "parse_webhook_secrets"]


@dataclass(frozen=True)
class Settings:
    """Everything configurable, with production-sane defaults; each field's metadata names its
    environment variable and meaning (``docs/configuration.md`` is generated from them)."""

    webhook_secrets: tuple[str, ...] = field(
        default=(),
        repr=False,
        metadata=documented(
            "CLERK_WEBHOOK_SECRET",
            "the endpoint's Signing Secret `whsec_…`; several separated by spaces or commas "
            "during a rotation (each is tried)",
            "— (required by the ingress)",
        ),
    )
    message_secrets: tuple[str, ...] = field(
        default=(),
        repr=False,
        metadata=documented(
            "CLERK_SYNC_MESSAGE_SECRET",
            "key of the MAC that the ingress, sweeper, retries and replay put on each task "
            "message; workers apply no message without it (at least 32 characters, e.g. "
            "`openssl rand -hex 32`; several separated by spaces or commas during a rotation: "
            "the first signs, each verifies). Not needed by Flower or beat",
            "— (required by the ingress and workers; `dev` makes one)",
        ),
    )
    database_url: str = field(
        default=DEFAULT_DATABASE_URL,
        metadata=documented(
            "DATABASE_URL", "SQLAlchemy URL; `postgresql://…` is routed to psycopg 3"
        ),
    )
    broker_url: str = field(
        default=DEFAULT_BROKER_URL,
        metadata=documented(
            "CELERY_BROKER_URL", "the broker; `filesystem://` is for `clerk-sync dev` only"
        ),
    )
    broker_filesystem_dir: str = field(
        default=".clerk-sync-broker",
        metadata=documented(
            "CLERK_SYNC_BROKER_DIR", "folder of the filesystem broker (`clerk-sync dev`)"
        ),
    )
    queue_name: str = field(
        default="clerk-sync",
        metadata=documented("CLERK_SYNC_QUEUE", "queue name (a Redis list of that name)"),
    )
    max_body_bytes: int = field(
        default=1024 * 1024,
        metadata=documented(
            "CLERK_SYNC_MAX_BODY_BYTES", "larger bodies get `413` before being read in full"
        ),
    )
    body_timeout_seconds: float = field(
        default=10.0,
        metadata=documented(
            "CLERK_SYNC_BODY_TIMEOUT_SECONDS",
            "the ingress answers `408` when a request body stops arriving for this long (keep "
            "it below Svix's 15 s)",
        ),
    )
    workspace_metadata_key: str = field(
        default="convexWorkspaceId",
        metadata=documented(
            "CLERK_SYNC_WORKSPACE_METADATA_KEY",
            "`public_metadata` key copied into `organizations.workspace_id`",
        ),
    )
    clerk_secret_key: str = field(
        default="",
        repr=False,
        metadata=documented(
            "CLERK_SECRET_KEY",
            "the instance's Backend API secret key `sk_…`, for `clerk-sync reconcile`; sent only "
            "in the `Authorization` header, never logged or printed",
            "— (required by `reconcile`)",
        ),
    )
    clerk_api_url: str = field(
        default=DEFAULT_CLERK_API_URL,
        metadata=documented(
            "CLERK_API_URL", "base URL of Clerk's Backend API (`/v1/…` paths are appended)"
        ),
    )
    clerk_api_max_requests_per_second: float = field(
        default=5.0,
        metadata=documented(
            "CLERK_API_MAX_REQUESTS_PER_SECOND",
            "cap on `reconcile`'s Backend API request rate (see "
            "[Reconciliation](operations.md#reconciliation))",
        ),
    )
    reconcile_interval_minutes: int | None = field(
        default=None,
        metadata=documented(
            "CLERK_SYNC_RECONCILE_INTERVAL_MINUTES",
            "beat runs `reconcile` this often; unset, it only runs by hand",
            "— (never)",
        ),
    )
    max_retries: int = field(
        default=8,
        metadata=documented(
            "CLERK_SYNC_MAX_RETRIES",
            "Celery retries of a transiently failing event before it is dead-lettered",
        ),
    )
    retry_backoff_seconds: float = field(
        default=2.0,
        metadata=documented(
            "CLERK_SYNC_RETRY_BACKOFF_SECONDS",
            "first retry delay; doubles each time, with jitter",
        ),
    )
    retry_backoff_max_seconds: float = field(
        default=120.0,
        metadata=documented(
            "CLERK_SYNC_RETRY_BACKOFF_MAX_SECONDS",
            "cap of the retry delay; must be below the visibility timeout",
        ),
    )
    visibility_timeout_seconds: int = field(
        default=300,
        metadata=documented(
            "CLERK_SYNC_VISIBILITY_TIMEOUT_SECONDS",
            "how long Redis waits before redelivering a task a worker took but never acknowledged",
        ),
    )
    broker_publish_timeout_seconds: float = field(
        default=2.0,
        metadata=documented(
            "CLERK_SYNC_BROKER_PUBLISH_TIMEOUT_SECONDS",
            "how long the ingress waits for the broker before answering `503`",
        ),
    )
    db_lock_timeout_ms: int = field(
        default=10_000,
        metadata=documented(
            "CLERK_SYNC_DB_LOCK_TIMEOUT_MS",
            "PostgreSQL `lock_timeout` for workers; a lock wait beyond it is retried",
        ),
    )
    db_idle_in_transaction_timeout_ms: int = field(
        default=60_000,
        metadata=documented(
            "CLERK_SYNC_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS",
            "a worker session that has waited this long for its client inside a transaction (a "
            "frozen or cut-off worker) is ended, releasing the organization locks it holds: by "
            "PostgreSQL between statements, by another worker's lock timeout in the middle of a "
            "pipeline (see [worker frozen](operations.md#an-event-in-flight-when-something-fails))"
            "; `0`: never",
        ),
    )
    ledger_redeliver_after_seconds: int = field(
        default=600,
        metadata=documented(
            "CLERK_SYNC_LEDGER_REDELIVER_AFTER_SECONDS",
            "an accepted event not finished after this long is published again by the sweeper",
        ),
    )
    ledger_sweep_interval_seconds: int = field(
        default=60,
        metadata=documented(
            "CLERK_SYNC_LEDGER_SWEEP_INTERVAL_SECONDS", "how often beat runs the sweeper"
        ),
    )
    ledger_max_redeliveries: int = field(
        default=5,
        metadata=documented(
            "CLERK_SYNC_LEDGER_MAX_REDELIVERIES",
            "an event the sweeper has re-published this many times without an outcome is "
            "dead-lettered (`dead` in the inbox, with why) and dropped from the ledger",
        ),
    )
    purge_after_days: int | None = field(
        default=None,
        metadata=documented(
            "CLERK_SYNC_PURGE_AFTER_DAYS",
            "beat purges `applied`/`skipped` events received more than this many days ago, "
            "hourly; a purged event is lost to `clerk-sync rebuild` (see "
            "[Retention](operations.md#retention))",
            "— (never)",
        ),
    )
    log_format: str = field(
        default="json",
        metadata=documented(
            "CLERK_SYNC_LOG_FORMAT", "`json` lines for production, `console` for people"
        ),
    )
    log_level: str = field(
        default="INFO",
        metadata=documented(
            "CLERK_SYNC_LOG_LEVEL",
            "`DEBUG`, `INFO`, `WARNING` or `ERROR`, for the ingress and the workers; `DEBUG` "
            "adds one ingress line per accepted event",
        ),
    )
    worker_metrics_port: int = field(
        default=9808,
        metadata=documented(
            "CLERK_SYNC_WORKER_METRICS_PORT",
            "port of each worker's Prometheus endpoint; `0` turns it off",
        ),
    )
    ingress_metrics_port: int = field(
        default=9807,
        metadata=documented(
            "CLERK_SYNC_INGRESS_METRICS_PORT",
            "port of the ingress's Prometheus endpoint, a listener of its own beside the webhook "
            "port (keep it off the public network); `0` turns it off",
        ),
    )
    require_durable_broker: bool = field(
        default=False,
        metadata=documented(
            "CLERK_SYNC_REQUIRE_DURABLE_BROKER",
            "`1`: the ingress refuses to start, and `/readyz` answers `503`, unless the broker's "
            "Redis is known to be durable (`appendonly yes`, `maxmemory-policy noeviction`); "
            "unknown counts as not durable (see [Durable broker](operations.md#durable-broker))",
        ),
    )
    allow_untested_versions: bool = field(
        default=False,
        metadata=documented(
            "CLERK_SYNC_ALLOW_UNTESTED_VERSIONS",
            "`1`: start the worker, ingress, Flower and beat even with a celery, kombu, "
            "billiard, redis-py or hiredis outside the tested minor versions (a warning instead "
            "of a refusal; for `scripts/upgrade-canary`, see "
            "[Upgrades](development.md#upgrades))",
        ),
    )
    batch_size: int = field(
        default=100,
        metadata=documented(
            "CLERK_SYNC_BATCH_SIZE",
            "most events a worker applies in one database transaction; each pool process also "
            "reserves up to twice this many messages (see [Batches](architecture.md#batches)); "
            "`1` turns batching off (one Celery task per event)",
        ),
    )
    batch_flush_interval_ms: int = field(
        default=50,
        metadata=documented(
            "CLERK_SYNC_BATCH_FLUSH_INTERVAL_MS",
            "longest a received event waits in the worker's buffer while every pool process is "
            "applying a batch (while one is idle, it waits for nothing); at most a tenth of the "
            "visibility timeout",
        ),
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        env = os.environ if env is None else env
        defaults = cls()
        settings = cls(
            webhook_secrets=parse_webhook_secrets(env.get("CLERK_WEBHOOK_SECRET", "")),
            message_secrets=parse_message_secrets(env.get("CLERK_SYNC_MESSAGE_SECRET", "")),
            database_url=normalise_database_url(
                env.get("DATABASE_URL", "").strip() or DEFAULT_DATABASE_URL
            ),
            broker_url=env.get("CELERY_BROKER_URL", "").strip() or DEFAULT_BROKER_URL,
            broker_filesystem_dir=env.get("CLERK_SYNC_BROKER_DIR", "").strip()
            or defaults.broker_filesystem_dir,
            queue_name=env.get("CLERK_SYNC_QUEUE", "").strip() or defaults.queue_name,
            max_body_bytes=whole_number(
                env, "CLERK_SYNC_MAX_BODY_BYTES", defaults.max_body_bytes, 1
            ),
            body_timeout_seconds=positive_number(
                env, "CLERK_SYNC_BODY_TIMEOUT_SECONDS", defaults.body_timeout_seconds
            ),
            workspace_metadata_key=env.get("CLERK_SYNC_WORKSPACE_METADATA_KEY", "").strip()
            or defaults.workspace_metadata_key,
            clerk_secret_key=parse_clerk_secret_key(env.get("CLERK_SECRET_KEY", "")),
            clerk_api_url=parse_clerk_api_url(env.get("CLERK_API_URL", "")),
            clerk_api_max_requests_per_second=positive_number(
                env,
                "CLERK_API_MAX_REQUESTS_PER_SECOND",
                defaults.clerk_api_max_requests_per_second,
            ),
            reconcile_interval_minutes=optional_whole_number(
                env, "CLERK_SYNC_RECONCILE_INTERVAL_MINUTES", 1
            ),
            max_retries=whole_number(env, "CLERK_SYNC_MAX_RETRIES", defaults.max_retries),
            retry_backoff_seconds=positive_number(
                env, "CLERK_SYNC_RETRY_BACKOFF_SECONDS", defaults.retry_backoff_seconds
            ),
            retry_backoff_max_seconds=positive_number(
                env, "CLERK_SYNC_RETRY_BACKOFF_MAX_SECONDS", defaults.retry_backoff_max_seconds
            ),
            visibility_timeout_seconds=whole_number(
                env,
                "CLERK_SYNC_VISIBILITY_TIMEOUT_SECONDS",
                defaults.visibility_timeout_seconds,
                1,
            ),
            broker_publish_timeout_seconds=positive_number(
                env,
                "CLERK_SYNC_BROKER_PUBLISH_TIMEOUT_SECONDS",
                defaults.broker_publish_timeout_seconds,
            ),
            db_lock_timeout_ms=whole_number(
                env, "CLERK_SYNC_DB_LOCK_TIMEOUT_MS", defaults.db_lock_timeout_ms
            ),
            db_idle_in_transaction_timeout_ms=whole_number(
                env,
                "CLERK_SYNC_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS",
                defaults.db_idle_in_transaction_timeout_ms,
            ),
            ledger_redeliver_after_seconds=whole_number(
                env,
                "CLERK_SYNC_LEDGER_REDELIVER_AFTER_SECONDS",
                defaults.ledger_redeliver_after_seconds,
                1,
            ),
            ledger_sweep_interval_seconds=whole_number(
                env,
                "CLERK_SYNC_LEDGER_SWEEP_INTERVAL_SECONDS",
                defaults.ledger_sweep_interval_seconds,
                1,
            ),
            ledger_max_redeliveries=whole_number(
                env, "CLERK_SYNC_LEDGER_MAX_REDELIVERIES", defaults.ledger_max_redeliveries, 1
            ),
            purge_after_days=optional_whole_number(env, "CLERK_SYNC_PURGE_AFTER_DAYS", 1),
            log_format=cls._log_format(env),
            log_level=cls._log_level(env),
            worker_metrics_port=whole_number(
                env, "CLERK_SYNC_WORKER_METRICS_PORT", defaults.worker_metrics_port
            ),
            batch_size=whole_number(env, "CLERK_SYNC_BATCH_SIZE", defaults.batch_size, 1),
            batch_flush_interval_ms=whole_number(
                env, "CLERK_SYNC_BATCH_FLUSH_INTERVAL_MS", defaults.batch_flush_interval_ms, 1
            ),
            ingress_metrics_port=whole_number(
                env, "CLERK_SYNC_INGRESS_METRICS_PORT", defaults.ingress_metrics_port
            ),
            require_durable_broker=flag(env, "CLERK_SYNC_REQUIRE_DURABLE_BROKER"),
            allow_untested_versions=flag(env, "CLERK_SYNC_ALLOW_UNTESTED_VERSIONS"),
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

    def require_message_secrets(self) -> None:
        """Who publishes task messages signs them and who applies them verifies them."""
        if not self.message_secrets:
            raise SettingsError(
                "CLERK_SYNC_MESSAGE_SECRET is not set: task messages are signed and verified "
                "with it (make one with: openssl rand -hex 32)"
            )

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
