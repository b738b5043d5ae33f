"""Shared fixtures: real PostgreSQL, SQLite, Redis and Celery worker processes.

PostgreSQL and Redis are the machine's own (``TEST_POSTGRES_URL``, ``TEST_REDIS_URL`` override the
defaults). Each test session gets its own PostgreSQL database; each test starts from empty tables
and an empty Redis database.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis
from gunicorn.app.base import BaseApplication
from sqlalchemy import Engine, create_engine, delete, select, text

from clerk_sync.core.settings import Settings
from ingress import create_app
from models.database import make_engine
from models.migrate import upgrade
from models.tables import metadata, webhook_events
from tests.factories import body_of, new_svix_id, signed_headers
from tests.servers import stop_process

ROOT = Path(__file__).resolve().parent.parent
POSTGRES_ADMIN_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/11")
WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
SECOND_WEBHOOK_SECRET = "whsec_dGhpcyBpcyBhIHNlY29uZCB0ZXN0IGtleSEh"
MESSAGE_SECRET = "test-message-secret-0123456789abcdef0123456789abcdef"
"""The key of the task messages' MAC (``CLERK_SYNC_MESSAGE_SECRET``) in the tests."""


def wait_for(predicate: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05) -> Any:
    """Poll until ``predicate`` returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s: {predicate}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, migrated to head."""
    name = f"clerk_sync_test_{uuid.uuid4().hex[:8]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    upgrade(url)
    yield url
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The embedded default: a SQLite file, migrated to head."""
    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'clerk-sync.db'}"
    upgrade(url)
    return url


def empty_tables(engine: Engine) -> None:
    with engine.begin() as connection:
        for table in reversed(metadata.sorted_tables):
            connection.execute(delete(table))


@pytest.fixture
def pg_engine(postgres_url: str) -> Iterator[Engine]:
    engine = make_engine(postgres_url)
    empty_tables(engine)
    yield engine
    engine.dispose()


@pytest.fixture(params=["postgresql", "sqlite"])
def engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """Each test using this runs once on PostgreSQL and once on SQLite."""
    url = request.getfixturevalue("postgres_url" if request.param == "postgresql" else "sqlite_url")
    engine = make_engine(url)
    empty_tables(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def redis_client() -> Iterator[redis.Redis[bytes]]:
    client: redis.Redis[bytes] = redis.Redis.from_url(REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def settings(postgres_url: str, redis_client: redis.Redis[bytes]) -> Settings:
    """Settings for a pipeline on real PostgreSQL and Redis, with short retry delays."""
    return Settings(
        webhook_secrets=(WEBHOOK_SECRET,),
        message_secrets=(MESSAGE_SECRET,),
        database_url=postgres_url,
        broker_url=REDIS_URL,
        queue_name=f"clerk-sync-test-{uuid.uuid4().hex[:6]}",
        max_retries=3,
        retry_backoff_seconds=0.2,
        retry_backoff_max_seconds=1.0,
        visibility_timeout_seconds=60,
        broker_publish_timeout_seconds=1.0,
        db_lock_timeout_ms=500,
        worker_metrics_port=0,
        ingress_metrics_port=0,
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that makes ``Settings.from_env()`` in a child process equal ``settings``."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CLERK_", "CELERY_", "DATABASE_URL"))
    }
    env.update(
        {
            "CLERK_WEBHOOK_SECRET": " ".join(settings.webhook_secrets),
            "CLERK_SYNC_MESSAGE_SECRET": " ".join(settings.message_secrets),
            "DATABASE_URL": settings.database_url,
            "CELERY_BROKER_URL": settings.broker_url,
            "CLERK_SYNC_BROKER_DIR": settings.broker_filesystem_dir,
            "CLERK_SYNC_QUEUE": settings.queue_name,
            "CLERK_SYNC_SENTINEL_MASTER": settings.sentinel_master,
            "CLERK_SYNC_ACCEPT_REPLICA_WAIT_MS": str(settings.accept_replica_wait_ms),
            "CLERK_SYNC_MAX_RETRIES": str(settings.max_retries),
            "CLERK_SYNC_RETRY_BACKOFF_SECONDS": str(settings.retry_backoff_seconds),
            "CLERK_SYNC_RETRY_BACKOFF_MAX_SECONDS": str(settings.retry_backoff_max_seconds),
            "CLERK_SYNC_VISIBILITY_TIMEOUT_SECONDS": str(settings.visibility_timeout_seconds),
            "CLERK_SYNC_DB_LOCK_TIMEOUT_MS": str(settings.db_lock_timeout_ms),
            "CLERK_SYNC_LEDGER_REDELIVER_AFTER_SECONDS": str(
                settings.ledger_redeliver_after_seconds
            ),
            "CLERK_SYNC_WORKSPACE_METADATA_KEY": settings.workspace_metadata_key,
            "CLERK_SYNC_LOG_FORMAT": settings.log_format,
            "CLERK_SYNC_WORKER_METRICS_PORT": str(settings.worker_metrics_port),
            "CLERK_SYNC_INGRESS_METRICS_PORT": str(settings.ingress_metrics_port),
            "CLERK_SYNC_REQUIRE_DURABLE_BROKER": "1" if settings.require_durable_broker else "0",
            "CLERK_SYNC_MAX_BODY_BYTES": str(settings.max_body_bytes),
            "CLERK_SYNC_BODY_TIMEOUT_SECONDS": str(settings.body_timeout_seconds),
            "CLERK_SYNC_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS": str(
                settings.db_idle_in_transaction_timeout_ms
            ),
            "CLERK_SYNC_BATCH_SIZE": str(settings.batch_size),
            "CLERK_SYNC_BATCH_FLUSH_INTERVAL_MS": str(settings.batch_flush_interval_ms),
            "CLERK_SYNC_CHANGES_TASK": settings.changes_task,
            "CLERK_SYNC_CHANGES_QUEUE": settings.changes_queue,
            "CLERK_SYNC_CHANGES_BROKER_URL": settings.changes_broker_url,
            # scripts/upgrade-canary runs the broker tests with newer libraries.
            "CLERK_SYNC_ALLOW_UNTESTED_VERSIONS": os.environ.get(
                "CLERK_SYNC_ALLOW_UNTESTED_VERSIONS",
                "1" if settings.allow_untested_versions else "0",
            ),
        }
    )
    return env


class WorkerProcess:
    """A real worker process (``clerk-sync worker``) consuming the test queue."""

    def __init__(
        self,
        settings: Settings,
        log_path: Path,
        concurrency: int = 2,
        options: Sequence[str] = ("--without-gossip", "--without-mingle"),
        hostname: str | None = None,
    ) -> None:
        self.log_path = log_path
        self.hostname = hostname or f"test-{uuid.uuid4().hex[:6]}@%h"
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "clerk_sync",
                "worker",
                f"--concurrency={concurrency}",
                f"--hostname={self.hostname}",
                *options,
            ],
            # Unbuffered: the tests wait on lines of the log (``ready.``, a process's exit) and
            # must see each one when it is written, not when a buffer fills.
            env={**settings_env(settings), "PYTHONUNBUFFERED": "1"},
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(lambda: b"ready." in log_path.read_bytes() or self.process.poll() is not None, 60)
        if self.process.poll() is not None:
            pytest.fail(f"worker exited early:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process)
        self._log.close()


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Start real worker processes for given settings; all are stopped after the test."""
    started: list[WorkerProcess] = []

    def start(settings: Settings, concurrency: int = 2, **options: Any) -> WorkerProcess:
        """``options``: ``WorkerProcess``'s (Celery options, a node name)."""
        worker = WorkerProcess(
            settings, tmp_path / f"worker-{len(started)}.log", concurrency, **options
        )
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def queue_length(client: redis.Redis[bytes], queue_name: str) -> int:
    """Messages waiting in a kombu Redis queue (a Redis list named after the queue)."""
    return int(client.llen(queue_name))


Send = Callable[..., str]


@pytest.fixture
def send(settings: Settings) -> Send:
    """Post a payload to the ingress app (real Redis broker); returns its svix-id."""
    client = create_app(settings).test_client()

    def post(payload: dict[str, Any], svix_id: str | None = None) -> str:
        svix_id = svix_id or new_svix_id()
        body = body_of(payload)
        headers = signed_headers(settings.webhook_secrets[0], body, svix_id=svix_id)
        response = client.post("/webhook/clerk", data=body, headers=headers)
        assert response.status_code == 202, response.get_json()
        return svix_id

    return post


def inbox_row(engine: Engine, svix_id: str) -> dict[str, Any] | None:
    with engine.connect() as connection:
        row = connection.execute(
            select(webhook_events).where(webhook_events.c.svix_id == svix_id)
        ).one_or_none()
    return None if row is None else dict(row._mapping)


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """``clerk-sync ingress`` invoked in-process must stop before serving: should it start a
    server after all, fail at once instead of serving for ever."""

    def refuse(self: object) -> None:
        raise AssertionError("clerk-sync ingress started a server")

    monkeypatch.setattr(BaseApplication, "run", refuse)


FLOWER_USER = "ops:correct-horse"
FLOWER_AUTH = "Basic " + base64.b64encode(FLOWER_USER.encode()).decode()
"""The ``Authorization`` header of Flower's basic auth in the tests."""


def start_flower(settings: Settings, port: int, log_path: Path) -> subprocess.Popen[bytes]:
    """A real Flower (``clerk-sync flower``) with basic auth, on 127.0.0.1:``port``; without
    the message secret, which Flower does not need (so it cannot sign a message)."""
    env = {**settings_env(settings), "FLOWER_BASIC_AUTH": FLOWER_USER}
    env.pop("CLERK_SYNC_MESSAGE_SECRET")
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "clerk_sync", "flower", f"--port={port}", "--address=127.0.0.1"],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
