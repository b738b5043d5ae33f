"""Prometheus metrics of the ingress, served on a port of their own
(``CLERK_SYNC_INGRESS_METRICS_PORT``), never on the public webhook port.

Under gunicorn, ``PROMETHEUS_MULTIPROC_DIR`` (``clerk-sync ingress`` sets it) lets every worker
process write its counts to that folder; the gunicorn master serves their sum (``serve``), so a
scrape sees the whole ingress whichever worker counted.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)

OUTCOMES = (
    "accepted",
    "missing_headers",
    "bad_signature",
    "stale",
    "too_large",
    "body_timeout",
    "malformed",
    "broker_down",
    "duplicate",
    "conflict",
)


class IngressMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "clerk_sync_ingress_requests",
            "Webhook requests by outcome.",
            ["outcome"],
            registry=self.registry,
        )
        self.events = Counter(
            "clerk_sync_ingress_events",
            "Events accepted (queued), by Clerk event type.",
            ["event_type"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "clerk_sync_ingress_request_duration_seconds",
            "Time to answer a webhook request.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )
        self.requests_by_outcome = {outcome: self.requests.labels(outcome) for outcome in OUTCOMES}
        """Every outcome's child, made once: it shows as 0 before it first happens, and a
        request does not look its counter up by label."""

    def exposition(self) -> bytes:
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return bytes(generate_latest(registry))
        return bytes(generate_latest(self.registry))


def serve(port: int) -> None:
    """Serve the sum of every process's counts (``PROMETHEUS_MULTIPROC_DIR``) over HTTP from a
    thread of this process: the gunicorn master, which forks the workers and outlives them."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    start_http_server(port, addr="0.0.0.0", registry=registry)  # noqa: S104 - scraped from outside
