"""Sizes of a run (full or ``--quick``) and what every benchmark is handed."""

from __future__ import annotations

import http.client
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from bench.procs import Supervisor
from bench.services import Database, Services


@dataclass(frozen=True)
class Plan:
    """How big and how long each benchmark is. ``full()`` matches issue #4; ``quick()`` is a
    smoke run of the same code paths."""

    quick: bool
    ingress_seconds: float
    ingress_warmup_seconds: float
    ingress_repeats: int
    signed_requests: int
    worker_events: int
    worker_baseline_events: int
    worker_repeats: int
    e2e_seconds: float
    e2e_repeats: int
    backlog_small: int
    backlog_large: int
    table_rows: int
    table_events: int
    table_repeats: int
    ingress_connections: int = 32
    ingress_workers: int = 2
    ingress_threads: int = 4
    wrk_threads: int = 2
    worker_concurrency: int = 2
    e2e_rate: float = 200.0
    hacks_events: int = 20_000
    """Backlog of every drain of the ``hacks`` benchmark."""
    hacks_drain_window: float = 10.0
    """A drain of ``hacks`` is measured until the backlog is empty or this many seconds of
    processing have passed (a variant that is many times slower is measured on part of it)."""
    hacks_rounds: int = 4
    """Rounds of ``hacks``'s worker and ingress comparisons (each variant once per round): other
    people's work on the machine moves a single drain by up to a third."""
    hacks_wrk_seconds: float = 8.0

    @classmethod
    def full(cls) -> Plan:
        return cls(
            quick=False,
            ingress_seconds=10,
            ingress_warmup_seconds=3,
            # The shortest runs and the noisiest ratio (three servers sharing two cores with
            # wrk and Redis): five runs of each for a steadier median.
            ingress_repeats=5,
            # Each request once per run (the ingress queues an svix id once): more than the
            # fastest server answers in ingress_seconds.
            signed_requests=150_000,
            worker_events=50_000,
            worker_baseline_events=10_000,
            worker_repeats=3,
            e2e_seconds=12,
            e2e_repeats=2,
            backlog_small=10_000,
            backlog_large=100_000,
            table_rows=1_000_000,
            table_events=10_000,
            table_repeats=3,
        )

    @classmethod
    def smoke(cls) -> Plan:
        return cls(
            quick=True,
            ingress_seconds=3,
            ingress_warmup_seconds=1,
            ingress_repeats=1,
            signed_requests=40_000,
            worker_events=2_000,
            worker_baseline_events=1_000,
            worker_repeats=1,
            e2e_seconds=4,
            e2e_repeats=1,
            backlog_small=500,
            backlog_large=3_000,
            table_rows=50_000,
            table_events=500,
            table_repeats=1,
            hacks_events=1_500,
            hacks_drain_window=5.0,
            hacks_rounds=1,
            hacks_wrk_seconds=2.0,
        )


@dataclass
class Context:
    plan: Plan
    services: Services
    supervisor: Supervisor
    work_dir: Path
    """Logs and scratch files of this run (``bench/results/logs``)."""
    profile: bool = False
    amqp_url: str = ""
    """RabbitMQ for the ``-amqp`` benchmarks (``bench.rabbitmq``)."""
    databases: list[Database] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def database(self, suffix: str = "") -> Database:
        """A fresh, migrated database of our own; dropped when the run ends."""
        name = self.services.database_prefix + (f"_{suffix}" if suffix else "")
        database = Database(self.services, name)
        database.create(self.work_dir)
        self.databases.append(database)
        return database

    def drop_databases(self) -> None:
        for database in self.databases:
            database.drop()
        self.databases.clear()

    @staticmethod
    def tag() -> str:
        """A short unique prefix for ids, so no two streams of a run collide."""
        return uuid.uuid4().hex[:6]

    def say(self, message: str) -> None:
        elapsed = time.monotonic() - self.started
        print(f"[{elapsed:6.0f}s] {message}", file=sys.stderr, flush=True)


def http_status(
    url: str,
    method: str = "GET",
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 5.0,
) -> int:
    """The status of one request to a loopback server, or 0 if it could not be made."""
    without_scheme = url.removeprefix("http://")
    host_port, _, path = without_scheme.partition("/")
    host, _, port = host_port.partition(":")
    connection = http.client.HTTPConnection(host, int(port or 80), timeout=timeout)
    try:
        connection.request(method, "/" + path, body=body, headers=headers or {})
        response = connection.getresponse()
        response.read()
        return int(response.status)
    except OSError:
        return 0
    finally:
        connection.close()
