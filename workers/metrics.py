"""Prometheus metrics of the workers, served on ``CLERK_SYNC_WORKER_METRICS_PORT``.

Celery's prefork pool runs tasks in child processes: with ``PROMETHEUS_MULTIPROC_DIR`` set
(``clerk-sync worker`` does), each child writes its counts to that folder and the main process
serves their sum, together with the pipeline's gauges (``workers.gauges``), read at scrape time:
the worker is where both the database and the broker are within reach.
"""

from __future__ import annotations

import os

from prometheus_client import CollectorRegistry, Counter, Histogram, multiprocess, start_http_server

from clerk_sync.core.settings import Settings
from workers.gauges import PipelineGauges

LAG_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400)


class WorkerMetrics:
    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings
        """Given, ``serve`` adds the pipeline's gauges (they read its database and broker)."""
        self.registry = CollectorRegistry()
        self.events = Counter(
            "clerk_sync_worker_events",
            "Events processed, by outcome (applied, skipped, dead, duplicate) and event type.",
            ["status", "event_type"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "clerk_sync_worker_processing_duration_seconds",
            "Time to record and apply one event, retries in the same delivery included.",
            ["event_type"],
            registry=self.registry,
        )
        self.lag = Histogram(
            "clerk_sync_worker_lag_seconds",
            "From Clerk's event time to the event being applied here.",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.retries = Counter(
            "clerk_sync_worker_retries",
            "Transient failures handed to Celery for a later retry, by event type.",
            ["event_type"],
            registry=self.registry,
        )

    def serve(self, port: int) -> None:
        """Expose the metrics over HTTP from this (the main worker) process."""
        registry = self.registry
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        if self.settings is not None:
            registry.register(PipelineGauges(self.settings))
        start_http_server(port, addr="0.0.0.0", registry=registry)  # noqa: S104 - scraped from outside
