"""The one settings object, read from the environment once at start-up.

Every process (ingress, worker, CLI) builds a ``Settings`` with ``Settings.from_env()`` and passes
it down; nothing else reads ``os.environ``. Validation errors are ``SettingsError`` with a message
fit to print as the single line an operator sees. How each value is parsed and documented is in
``clerk_sync.core.setting_values``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Self

from clerk_sync.core import change_feed_settings as feed
from clerk_sync.core import clerk_api_settings as clerk_api
from clerk_sync.core.sentinel import REDIS_URL_SCHEMES, replica_wait_field, sentinel_master_field
from clerk_sync.core.setting_values import (
    DEFAULT_BROKER_URL,
    DEFAULT_DATABASE_URL,
    LOG_LEVELS,
    SETTING,
    Setting,
    SettingsError,
    check_webhook_secret,
    choice,
    database_url,
    documented,
    optional_whole,
    parse_clerk_secret_key,
    parse_message_secrets,
    parse_webhook_secrets,
    parsed,
    positive,
    switch,
    whole,
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
            read=parsed(parse_webhook_secrets),
        ),
    )
    message_secrets: tuple[str, ...] = field(
        default=(),
        repr=False,
        metadata=documented(
            "CLERK_SYNC_MESSAGE_SECRET",
            "key of the MAC on every task message; workers apply no message without it (32+ "
            "characters: `openssl rand -hex 32`; in a rotation several, the first signs)",
            "— (required by the ingress and workers; `dev` makes one)",
            read=parsed(parse_message_secrets),
        ),
    )
    database_url: str = field(
        default=DEFAULT_DATABASE_URL,
        metadata=documented(
            "DATABASE_URL",
            "SQLAlchemy URL; `postgresql://…` is routed to psycopg 3",
            read=database_url,
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
        metadata=documented("CLERK_SYNC_QUEUE", "queue name (Redis list or RabbitMQ queue)"),
    )
    sentinel_master: str = sentinel_master_field()
    accept_replica_wait_ms: int = replica_wait_field()
    max_body_bytes: int = field(
        default=1024 * 1024,
        metadata=documented(
            "CLERK_SYNC_MAX_BODY_BYTES",
            "larger bodies get `413` before being read in full",
            read=whole(1),
        ),
    )
    body_timeout_seconds: float = field(
        default=10.0,
        metadata=documented(
            "CLERK_SYNC_BODY_TIMEOUT_SECONDS",
            "the ingress answers `408` when a request body stops arriving for this long (keep "
            "it below Svix's 15 s)",
            read=positive,
        ),
    )
    workspace_metadata_key: str = field(
        default="convexWorkspaceId",
        metadata=documented(
            "CLERK_SYNC_WORKSPACE_METADATA_KEY",
            "`public_metadata` key copied into `organizations.workspace_id`",
        ),
    )
    clerk_secret_key: str = clerk_api.secret_key_field()
    clerk_api_url: str = clerk_api.url_field()
    clerk_api_max_requests_per_second: float = clerk_api.rate_field()
    reconcile_interval_minutes: int | None = clerk_api.interval_field()
    max_retries: int = field(
        default=8,
        metadata=documented(
            "CLERK_SYNC_MAX_RETRIES",
            "Celery retries of a transiently failing event before it is dead-lettered",
            read=whole(),
        ),
    )
    retry_backoff_seconds: float = field(
        default=2.0,
        metadata=documented(
            "CLERK_SYNC_RETRY_BACKOFF_SECONDS",
            "first retry delay; doubles each time, with jitter",
            read=positive,
        ),
    )
    retry_backoff_max_seconds: float = field(
        default=120.0,
        metadata=documented(
            "CLERK_SYNC_RETRY_BACKOFF_MAX_SECONDS",
            "cap of the retry delay; must be below the visibility timeout",
            read=positive,
        ),
    )
    visibility_timeout_seconds: int = field(
        default=300,
        metadata=documented(
            "CLERK_SYNC_VISIBILITY_TIMEOUT_SECONDS",
            "how long Redis waits before redelivering a task a worker took but never acknowledged",
            read=whole(1),
        ),
    )
    broker_publish_timeout_seconds: float = field(
        default=2.0,
        metadata=documented(
            "CLERK_SYNC_BROKER_PUBLISH_TIMEOUT_SECONDS",
            "how long the ingress waits for the broker before answering `503`",
            read=positive,
        ),
    )
    db_lock_timeout_ms: int = field(
        default=10_000,
        metadata=documented(
            "CLERK_SYNC_DB_LOCK_TIMEOUT_MS",
            "PostgreSQL `lock_timeout` for workers; a lock wait beyond it is retried",
            read=whole(),
        ),
    )
    db_idle_in_transaction_timeout_ms: int = field(
        default=60_000,
        metadata=documented(
            "CLERK_SYNC_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS",
            "a worker session waiting this long for its client inside a transaction (a frozen "
            "worker) is ended, releasing its organization locks: by PostgreSQL between "
            "statements, by another worker's lock timeout mid-pipeline "
            "([worker frozen](operations.md#an-event-in-flight-when-something-fails)); `0`: never",
            read=whole(),
        ),
    )
    ledger_redeliver_after_seconds: int = field(
        default=600,
        metadata=documented(
            "CLERK_SYNC_LEDGER_REDELIVER_AFTER_SECONDS",
            "an accepted event not finished after this long is published again by the sweeper",
            read=whole(1),
        ),
    )
    ledger_sweep_interval_seconds: int = field(
        default=60,
        metadata=documented(
            "CLERK_SYNC_LEDGER_SWEEP_INTERVAL_SECONDS",
            "how often beat runs the sweeper",
            read=whole(1),
        ),
    )
    ledger_max_redeliveries: int = field(
        default=5,
        metadata=documented(
            "CLERK_SYNC_LEDGER_MAX_REDELIVERIES",
            "an event the sweeper has re-published this many times without an outcome is "
            "dead-lettered (`dead` in the inbox, with why) and dropped from the ledger",
            read=whole(1),
        ),
    )
    changes_task: str = feed.task_field()
    changes_queue: str = feed.queue_field()
    changes_broker_url: str = feed.broker_url_field()
    changes_retention_days: int | None = feed.retention_field()
    purge_after_days: int | None = field(
        default=None,
        metadata=documented(
            "CLERK_SYNC_PURGE_AFTER_DAYS",
            "beat purges `applied`/`skipped` events received more than this many days ago, "
            "hourly; a purged event is lost to `clerk-sync rebuild` (see "
            "[Retention](operations.md#retention))",
            "— (never)",
            read=optional_whole(1),
        ),
    )
    log_format: str = field(
        default="json",
        metadata=documented(
            "CLERK_SYNC_LOG_FORMAT",
            "`json` lines for production, `console` for people",
            read=choice(("json", "console"), str.lower),
        ),
    )
    log_level: str = field(
        default="INFO",
        metadata=documented(
            "CLERK_SYNC_LOG_LEVEL",
            "`DEBUG`, `INFO`, `WARNING` or `ERROR`, for the ingress and the workers; `DEBUG` "
            "adds one ingress line per accepted event",
            read=choice(LOG_LEVELS, str.upper),
        ),
    )
    worker_metrics_port: int = field(
        default=9808,
        metadata=documented(
            "CLERK_SYNC_WORKER_METRICS_PORT",
            "port of each worker's Prometheus endpoint; `0` turns it off",
            read=whole(),
        ),
    )
    ingress_metrics_port: int = field(
        default=9807,
        metadata=documented(
            "CLERK_SYNC_INGRESS_METRICS_PORT",
            "port of the ingress's Prometheus endpoint, a listener of its own beside the webhook "
            "port (keep it off the public network); `0` turns it off",
            read=whole(),
        ),
    )
    erase_on_user_deleted: bool = field(
        default=True,
        metadata=documented(
            "CLERK_SYNC_ERASE_ON_USER_DELETED",
            "`1`: `user.deleted` has the stored events about that user erased of personal data "
            "([Personal data](operations.md#personal-data)); `0`: kept until purged",
            read=switch,
        ),
    )
    require_durable_broker: bool = field(
        default=False,
        metadata=documented(
            "CLERK_SYNC_REQUIRE_DURABLE_BROKER",
            "`1`: the ingress refuses to start, and `/readyz` answers `503`, unless Redis is "
            "known durable (`appendonly yes`, `maxmemory-policy noeviction`; unknown is not: "
            "[Durable broker](operations.md#durable-broker))",
            read=switch,
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
            read=switch,
        ),
    )
    batch_size: int = field(
        default=100,
        metadata=documented(
            "CLERK_SYNC_BATCH_SIZE",
            "most events a worker applies in one database transaction; each pool process also "
            "reserves up to twice this many messages (see [Batches](architecture.md#batches)); "
            "`1` turns batching off (one Celery task per event)",
            read=whole(1),
        ),
    )
    batch_flush_interval_ms: int = field(
        default=50,
        metadata=documented(
            "CLERK_SYNC_BATCH_FLUSH_INTERVAL_MS",
            "longest a received event waits in the worker's buffer while every pool process is "
            "applying a batch (while one is idle, it waits for nothing); at most a tenth of the "
            "visibility timeout",
            read=whole(1),
        ),
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Self:
        env = os.environ if env is None else env
        settings = cls(
            **{
                setting.name: setting.metadata[SETTING].read(
                    env, setting.metadata[SETTING].variable, setting.default
                )
                for setting in fields(cls)
            }
        )
        settings.check_visibility_window()
        return settings

    def check_visibility_window(self) -> None:
        """What a worker holds unacknowledged must come back before the visibility timeout, or
        Redis hands it to a second worker: a retry's countdown (capped by the backoff) and a
        buffered message's wait (the flush interval, kept far below: a tenth)."""
        if self.retry_backoff_max_seconds >= self.visibility_timeout_seconds:
            raise SettingsError(
                "CLERK_SYNC_RETRY_BACKOFF_MAX_SECONDS must be smaller than "
                "CLERK_SYNC_VISIBILITY_TIMEOUT_SECONDS"
            )
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
        return self.broker_url.startswith(REDIS_URL_SCHEMES)

    @property
    def uses_amqp_broker(self) -> bool:
        """RabbitMQ: a quorum queue, publisher confirms (``core.queue.broker_configuration``)."""
        return self.broker_url.startswith(("amqp://", "amqps://", "pyamqp://"))

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]
