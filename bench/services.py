"""The benchmark's own PostgreSQL databases and Redis database, and the environment that points
``clerk-sync`` processes at them.

PostgreSQL and Redis are shared with other people's test runs: the harness creates and drops only
databases named ``clerk_sync_bench*`` and flushes only its own Redis database number.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path

import amqp.exceptions
import psycopg
import redis
from kombu.connection import Connection

from bench.events import WEBHOOK_SECRET
from bench.procs import ROOT, BenchError


@dataclass(frozen=True)
class Services:
    postgres_admin_url: str
    """A libpq URL of a database to connect to for CREATE/DROP DATABASE (``.../postgres``)."""
    redis_url: str
    """The harness's own Redis database (flushed between runs)."""
    database_prefix: str = "clerk_sync_bench"
    amqp_url: str = ""
    """Set: clerk-sync's processes use RabbitMQ (this URL) as their broker instead of Redis (the
    ``-amqp`` benchmarks); Redis still serves the baselines."""

    @property
    def broker_url(self) -> str:
        return self.amqp_url or self.redis_url

    def on_redis(self) -> Services:
        """These services with Redis as clerk-sync's broker."""
        return replace(self, amqp_url="")

    def queued(self, queue: str) -> int:
        """Messages waiting in clerk-sync's queue (a Redis list, or a RabbitMQ queue)."""
        if not self.amqp_url:
            client = self.redis()
            try:
                return int(client.llen(queue))
            finally:
                client.close()
        with Connection(self.amqp_url, connect_timeout=10) as connection:  # type: ignore[no-untyped-call]
            try:
                _name, ready, _consumers = connection.default_channel.queue_declare(
                    queue=queue, passive=True
                )
            except amqp.exceptions.NotFound:
                return 0
        return int(ready)

    def purge_queue(self, queue: str) -> None:
        """Empty a RabbitMQ queue of the harness, if it exists (Redis: ``flush_redis``)."""
        if not self.amqp_url:
            return
        connection = Connection(self.amqp_url, connect_timeout=10)  # type: ignore[no-untyped-call]
        with connection, suppress(amqp.exceptions.NotFound):
            connection.default_channel.queue_purge(queue=queue)  # type: ignore[no-untyped-call]

    def drop_queue(self, queue: str) -> None:
        """Delete a RabbitMQ queue of the harness (quorum queues outlive their consumers);
        Redis lists go with ``flush_redis``."""
        if not self.amqp_url:
            return
        with Connection(self.amqp_url, connect_timeout=10) as connection:  # type: ignore[no-untyped-call]
            connection.default_channel.queue_delete(queue=queue)
            connection.default_channel.exchange_delete(exchange=queue)

    def database_url(self, name: str) -> str:
        return self.postgres_admin_url.rsplit("/", 1)[0] + f"/{name}"

    def redis(self) -> redis.Redis[bytes]:
        return redis.Redis.from_url(self.redis_url, socket_timeout=30)

    def flush_redis(self) -> None:
        client = self.redis()
        try:
            client.flushdb()
        finally:
            client.close()


class Database:
    """A PostgreSQL database the harness created, migrated with ``clerk-sync db upgrade``."""

    def __init__(self, services: Services, name: str) -> None:
        if not name.startswith(services.database_prefix):
            raise ValueError(f"benchmark databases are named {services.database_prefix}*")
        self.services = services
        self.name = name
        self.url = services.database_url(name)

    def create(self, log_dir: Path) -> None:
        self.drop()
        with psycopg.connect(self.services.postgres_admin_url, autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{self.name}"')
        log_dir.mkdir(parents=True, exist_ok=True)
        with (log_dir / f"migrate-{self.name}.log").open("wb") as log:
            result = subprocess.run(
                [sys.executable, "-m", "clerk_sync", "db", "upgrade"],
                env=clerk_sync_env(self.services, self.url, queue="unused"),
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=120,
                check=False,
            )
        if result.returncode != 0:
            raise BenchError(f"clerk-sync db upgrade failed for {self.name} (see {log.name})")

    def drop(self) -> None:
        with psycopg.connect(self.services.postgres_admin_url, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    @contextmanager
    def connect(self, autocommit: bool = True) -> Iterator[psycopg.Connection[tuple[object, ...]]]:
        with psycopg.connect(self.url, autocommit=autocommit) as connection:
            yield connection

    def empty(self) -> None:
        """Remove every row clerk-sync wrote (the schema stays)."""
        with self.connect() as connection:
            connection.execute(
                "TRUNCATE webhook_events, webhook_event_ids, organization_memberships, "
                "organizations, users, tombstones"
            )

    def empty_inbox(self) -> None:
        with self.connect() as connection:
            connection.execute("TRUNCATE webhook_events, webhook_event_ids")

    def count_finished(self, connection: psycopg.Connection[tuple[object, ...]]) -> int:
        row = connection.execute(
            "SELECT count(*) FROM webhook_events WHERE status <> 'received'"
        ).fetchone()
        return int(row[0]) if row else 0  # type: ignore[call-overload]

    def status_counts(self) -> dict[str, int]:
        with self.connect() as connection:
            rows = connection.execute(
                "SELECT status, count(*) FROM webhook_events GROUP BY status"
            ).fetchall()
        return {str(status): int(count) for status, count in rows}  # type: ignore[call-overload]

    def rows_by_prefix(self, length: int = 10) -> dict[str, int]:
        """``webhook_events`` rows counted by the start of their svix id (ids carry the tag of
        the stream they came from)."""
        with self.connect() as connection:
            rows = connection.execute(
                "SELECT left(svix_id, %s), count(*) FROM webhook_events GROUP BY 1", (length,)
            ).fetchall()
        return {str(prefix): int(count) for prefix, count in rows}  # type: ignore[call-overload]

    def processing_span(self) -> tuple[float, float, int]:
        """(first, last) ``processed_at`` as Unix seconds, and how many events are finished."""
        with self.connect() as connection:
            row = connection.execute(
                "SELECT extract(epoch FROM min(processed_at)), "
                "extract(epoch FROM max(processed_at)), count(*) "
                "FROM webhook_events WHERE status <> 'received'"
            ).fetchone()
        if row is None or row[0] is None:
            return 0.0, 0.0, 0
        return float(row[0]), float(row[1]), int(row[2])  # type: ignore[arg-type, call-overload]

    def vacuum_analyze(self) -> None:
        with self.connect() as connection:
            connection.execute("VACUUM ANALYZE")


def clerk_sync_env(
    services: Services,
    database_url: str,
    *,
    queue: str,
    metrics_dir: Path | None = None,
) -> dict[str, str]:
    """The environment of a ``clerk-sync`` process of the benchmark: production defaults except
    where the harness must point it (database, broker, queue, secret, metrics storage)."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CLERK_", "CELERY_", "DATABASE_URL", "PROMETHEUS_"))
    }
    env.update(
        {
            "CLERK_WEBHOOK_SECRET": WEBHOOK_SECRET,
            # The key of the task messages' MAC (clerk_sync.core.message_auth).
            "CLERK_SYNC_MESSAGE_SECRET": "bench-message-secret-0123456789abcdef0123456789",
            "DATABASE_URL": database_url,
            "CELERY_BROKER_URL": services.broker_url,
            "CLERK_SYNC_QUEUE": queue,
            # One worker per run, and ports are shared with colleagues: no metrics endpoint.
            "CLERK_SYNC_WORKER_METRICS_PORT": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if metrics_dir is not None:
        metrics_dir.mkdir(parents=True, exist_ok=True)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    return env


def server_versions(services: Services) -> dict[str, str]:
    versions: dict[str, str] = {}
    try:
        with psycopg.connect(services.postgres_admin_url, connect_timeout=5) as connection:
            row = connection.execute("SHOW server_version").fetchone()
            versions["postgresql"] = str(row[0]) if row else "?"
            for setting in ("shared_buffers", "synchronous_commit", "max_connections"):
                row = connection.execute(f"SHOW {setting}").fetchone()
                versions[f"postgresql_{setting}"] = str(row[0]) if row else "?"
    except psycopg.Error as error:
        versions["postgresql"] = f"unreachable: {error}"
    client = services.redis()
    try:
        info = client.info("server")
        versions["redis"] = str(info.get("redis_version", "?"))
        persistence = client.info("persistence")
        versions["redis_aof_enabled"] = str(persistence.get("aof_enabled", "?"))
    except redis.RedisError as error:
        versions["redis"] = f"unreachable: {error}"
    finally:
        client.close()
    return versions
