"""Per-process resources of a worker (database engine, metrics, publisher), made on first use
so that importing and forking open nothing."""

from __future__ import annotations

import logging
import math
import random
from functools import cached_property
from typing import Final

from celery import Celery
from sqlalchemy import Engine, text

from clerk_sync.broker.publisher import Publisher
from clerk_sync.core.settings import Settings
from models.database import make_engine
from workers.metrics import WorkerMetrics

log = logging.getLogger("clerk_sync.worker")

WORKER_APPLICATION_NAME: Final = "clerk-sync-worker"
"""The workers' PostgreSQL sessions' ``application_name``: in ``pg_stat_activity``, and the
sessions ``models.database.end_stalled_lock_holders`` may end."""


class WorkerRuntime:
    """Per-process resources, created on first use so forking and importing open nothing."""

    def __init__(self, settings: Settings, celery_app: Celery) -> None:
        self.settings = settings
        self._celery = celery_app

    @cached_property
    def engine(self) -> Engine:
        return make_engine(
            self.settings.database_url,
            lock_timeout_ms=self.settings.db_lock_timeout_ms,
            idle_in_transaction_timeout_ms=self.settings.db_idle_in_transaction_timeout_ms,
            application_name=WORKER_APPLICATION_NAME,
        )

    @cached_property
    def metrics(self) -> WorkerMetrics:
        return WorkerMetrics(self.settings)

    @cached_property
    def publisher(self) -> Publisher:
        return Publisher(self.settings, self._celery)

    def warm_up(self) -> None:
        """Open a database connection (and the broker client) ahead of the first event; any
        failure is left for the first event to meet, and retry."""
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
            if self.publisher.ledger is not None:
                self.publisher.ledger.ping()
        except Exception as error:  # noqa: BLE001 - only an optimisation: logged, not raised
            log.info("warm-up incomplete", extra={"error": type(error).__name__})

    def retry_countdown(self, retries: int) -> float:
        """Exponential backoff with full jitter, capped below the visibility timeout."""
        ceiling = min(
            self.settings.retry_backoff_max_seconds,
            self.settings.retry_backoff_seconds * 2**retries,
        )
        countdown = random.uniform(ceiling / 2, ceiling)
        if self.settings.uses_amqp_broker:
            # Celery's native delayed delivery (RabbitMQ's quorum queues) delays by whole
            # seconds, one at least: a shorter countdown would be refused, and its message lost.
            return float(max(1, math.ceil(countdown)))
        return countdown
