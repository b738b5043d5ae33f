"""Gauges of the whole pipeline, read when Prometheus scrapes a worker: queue depth, ledger
size, dead letters, unfinished events and the age of the oldest, and the broker's durability.

They describe shared state (one Redis, one database), so every worker reports the same values:
aggregate them with ``max()``, never ``sum()``. A scrape reads at most once per
``cache_seconds`` (several Prometheus servers, or a dashboard refreshing, cost no more). A part
that cannot be read (database or broker down, a query timing out) is left out of the scrape and
counted in ``clerk_sync_metrics_scrape_errors_total``; the endpoint itself keeps answering.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Final

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, make_url, text
from sqlalchemy.pool import NullPool

from clerk_sync.core.durability import DurabilityMonitor, Verdict
from clerk_sync.core.queue import LEDGER_DUE_KEY, redis_client
from clerk_sync.core.settings import Settings
from models.changes import read_position, summarise_feed
from models.database import make_engine, transaction
from models.inbox import summarise
from workers.change_fanout import FANOUT_CONSUMER

log = logging.getLogger("clerk_sync.worker")

CACHE_SECONDS: Final = 5.0
SET_STATEMENT_TIMEOUT: Final = text("SET LOCAL statement_timeout = 3000")
"""A scrape must not hang on a slow database: Prometheus gives it 10 s by default."""
CONNECT_TIMEOUT_SECONDS: Final = 3
SOURCES: Final = ("database", "broker")


class PipelineGauges(Collector):
    """A prometheus-client custom collector: each scrape gets the families read last (if not
    older than ``cache_seconds``), plus the count of failed reads by source."""

    def __init__(self, settings: Settings, cache_seconds: float = CACHE_SECONDS) -> None:
        self._settings = settings
        self._cache_seconds = cache_seconds
        self._durability = DurabilityMonitor(settings, max_age_seconds=cache_seconds)
        self._lock = threading.Lock()
        self._read_at = 0.0
        self._families: list[Metric] = []
        self._errors = dict.fromkeys(SOURCES, 0)
        self._engine: Engine | None = None

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            now = time.monotonic()
            if not self._families or now - self._read_at >= self._cache_seconds:
                self._families = [*self._database_families(), *self._broker_families()]
                self._read_at = now
            families = list(self._families)
            errors = dict(self._errors)
        yield from families
        counter = CounterMetricFamily(
            "clerk_sync_metrics_scrape_errors",
            "Reads of the pipeline gauges that failed (the gauges of that source are left out).",
            labels=["source"],
        )
        for source, count in errors.items():
            counter.add_metric([source], count)
        yield counter

    def _database_families(self) -> list[Metric]:
        try:
            engine = self._database()
            with transaction(engine) as connection:
                if connection.dialect.name == "postgresql":
                    connection.execute(SET_STATEMENT_TIMEOUT)
                summary = summarise(connection)
                feed = summarise_feed(connection, read_position(connection, FANOUT_CONSUMER))
        except Exception as error:  # noqa: BLE001 - a failed read must never fail the scrape
            self._failed("database", error)
            return []
        oldest_age = 0.0
        if summary.oldest_received is not None:
            received_at = summary.oldest_received.received_at
            oldest_age = max(0.0, (datetime.now(UTC) - received_at).total_seconds())
        return [
            gauge(
                "clerk_sync_dead_letters",
                "Events dead-lettered in webhook_events (status dead).",
                summary.dead,
            ),
            gauge(
                "clerk_sync_unfinished_events",
                "Events recorded but not finished (status received: queued, retrying, deferred).",
                summary.received,
            ),
            gauge(
                "clerk_sync_oldest_unfinished_event_age_seconds",
                "Age of the oldest unfinished event since it was received (0: none).",
                oldest_age,
            ),
            gauge(
                "clerk_sync_changes_newest_id",
                "The newest id in the change feed, sync_changes (0: none).",
                feed.newest_id,
            ),
            gauge("clerk_sync_changes_rows", "Changes kept in sync_changes.", feed.rows),
            *(
                [
                    gauge(
                        "clerk_sync_changes_not_fanned_out",
                        "Changes not yet sent to the application's task (CLERK_SYNC_CHANGES_TASK).",
                        feed.behind,
                    )
                ]
                if self._settings.changes_task
                else []
            ),
        ]

    def _broker_families(self) -> list[Metric]:
        durability = self._durability.current()
        durable = GaugeMetricFamily(
            "clerk_sync_broker_durable",
            "1 if the broker's Redis keeps accepted events (appendonly yes, maxmemory-policy "
            "noeviction), else 0; state says durable, not_durable, unknown or not_checked.",
            labels=["state"],
        )
        durable.add_metric([str(durability.verdict)], 1 if durability.durable else 0)
        families: list[Metric] = [durable]
        if durability.verdict is Verdict.NOT_CHECKED or not self._settings.uses_redis_broker:
            return families  # RabbitMQ: no ledger; its queue depth is RabbitMQ's to report
        client = redis_client(self._settings)
        try:
            pipeline = client.pipeline(transaction=False)
            pipeline.llen(self._settings.queue_name)
            pipeline.zcard(LEDGER_DUE_KEY)
            depth, ledger_size = pipeline.execute()
        except Exception as error:  # noqa: BLE001 - a failed read must never fail the scrape
            self._failed("broker", error)
            return families
        finally:
            client.close()
        return [
            *families,
            gauge(
                "clerk_sync_queue_depth",
                "Messages waiting in the queue's Redis list.",
                int(depth),
            ),
            gauge(
                "clerk_sync_ledger_size",
                "Accepted events not yet finished (the ledger).",
                int(ledger_size),
            ),
        ]

    def _database(self) -> Engine:
        """An engine of its own: no pool (a connection per read, so nothing stays open in the
        main worker process while it forks its pool), and bounded waits on PostgreSQL."""
        if self._engine is None:
            url = make_url(self._settings.database_url)
            if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
                url = url.update_query_dict({"connect_timeout": str(CONNECT_TIMEOUT_SECONDS)})
            self._engine = make_engine(
                url.render_as_string(hide_password=False), poolclass=NullPool
            )
        return self._engine

    def _failed(self, source: str, error: Exception) -> None:
        self._errors[source] += 1
        log.warning(
            "metrics gauges not read", extra={"source": source, "error": type(error).__name__}
        )


def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)
