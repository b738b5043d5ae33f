"""Driving clerk-sync's own processes: fill the queue, start a worker, watch it drain."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from bench.context import http_status
from bench.cpu import CpuTracker, postgres_backends, redis_server, tree
from bench.events import Event
from bench.procs import (
    BenchError,
    Child,
    Supervisor,
    free_port,
    python_command,
    tree_memory,
    wait_until,
)
from bench.services import Database, Services, clerk_sync_env
from clerk_sync.broker.publisher import Publisher
from clerk_sync.core.queue import LEDGER_DUE_KEY, BrokerUnavailableError, QueuedEvent
from clerk_sync.core.settings import Settings

WORKER_START_TIMEOUT = 90.0
WORKER_GROUP = "clerk-sync worker"
POSTGRES_GROUP = "PostgreSQL backends"


def publisher_for(services: Services, queue: str) -> Publisher:
    """The ingress's own publisher (ledger entry, then Celery task message) on our Redis."""
    env = clerk_sync_env(services, "sqlite://", queue=queue)
    # Filling a queue is not what is measured: a broker slowed by a busy machine must not fail it.
    env["CLERK_SYNC_BROKER_PUBLISH_TIMEOUT_SECONDS"] = "30"
    return Publisher(Settings.from_env(env))


def prefill(services: Services, queue: str, events: Sequence[Event]) -> float:
    """Publish ``events`` in order exactly as the ingress would; returns the seconds it took.
    On RabbitMQ each publish waits for the broker's confirm, so the events go from as many
    threads as the benchmark's ingress has (in order within each thread, not overall)."""
    publisher = publisher_for(services, queue)
    started = time.perf_counter()
    received_at_ms = int(time.time() * 1000)

    def publish(positions: range) -> None:
        for position in positions:
            item = events[position]
            event = QueuedEvent(item.svix_id, item.body, received_at_ms + position // 1000)
            for attempt in range(PREFILL_ATTEMPTS):
                try:
                    publisher.publish(event)
                    break
                except BrokerUnavailableError:
                    # What the ingress answers 503 (RabbitMQ nacks the first publishes to a
                    # quorum queue whose leader is still being elected): sent again, as Svix
                    # would.
                    if attempt == PREFILL_ATTEMPTS - 1:
                        raise
                    time.sleep(0.2)

    if not services.amqp_url:
        publish(range(len(events)))
    else:
        with ThreadPoolExecutor(PREFILL_THREADS) as pool:
            list(pool.map(publish, _chunks(len(events), 500)))
    return time.perf_counter() - started


PREFILL_THREADS = 8
PREFILL_ATTEMPTS = 5


def _chunks(length: int, size: int) -> list[range]:
    return [range(start, min(start + size, length)) for start in range(0, length, size)]


def start_worker(
    supervisor: Supervisor,
    services: Services,
    database: Database,
    queue: str,
    name: str,
    concurrency: int,
    work_dir: Path,
    *,
    module: str = "clerk_sync",
    extra_env: Mapping[str, str] | None = None,
) -> Child:
    """``clerk-sync worker --concurrency N`` (the shipped command), ready to consume. ``module``
    and ``extra_env``: run it through another launcher (``bench.stock``), with more settings."""
    env = clerk_sync_env(
        services, database.url, queue=queue, metrics_dir=work_dir / f"metrics-{name}"
    )
    env.update(extra_env or {})
    child = supervisor.start(
        name,
        python_command(
            "-m",
            module,
            "worker",
            "--concurrency",
            str(concurrency),
            f"--hostname=bench-{uuid.uuid4().hex[:6]}@%h",
        ),
        env,
    )
    wait_until(
        lambda: child.log_contains("ready."),
        WORKER_START_TIMEOUT,
        f"{name} to start",
        alive=child.check_alive,
    )
    return child


@dataclass
class Drain:
    """What one worker did with a pre-filled queue."""

    events: int
    wall_seconds: float
    """From the worker being ready to the last event finished (polled)."""
    span_seconds: float
    """From the first to the last ``processed_at``."""
    statuses: dict[str, int]
    peak_rss_bytes: int = 0
    peak_pss_bytes: int = 0
    memory_samples: list[tuple[float, int, int]] = field(default_factory=list)
    """(seconds since start, RSS, PSS) of the worker's process tree."""
    left_in_queue: int = 0
    left_in_ledger: int = 0
    cpu_cores: dict[str, float] = field(default_factory=dict)
    """Average cores used during the drain, by process group (``bench.cpu``)."""

    @property
    def events_per_second(self) -> float:
        """Sustained rate: events finished per second between the first and the last."""
        if self.span_seconds <= 0:
            return 0.0
        return (self.events - 1) / self.span_seconds

    @property
    def cpu_ms_per_event(self) -> float:
        """CPU time of the worker's processes and their PostgreSQL backends per event (ms): a
        cost that other work on a shared machine disturbs far less than the rate does."""
        cores = self.cpu_cores.get(WORKER_GROUP, 0.0) + self.cpu_cores.get(POSTGRES_GROUP, 0.0)
        return cores * self.wall_seconds * 1000 / self.events if self.events else 0.0

    @property
    def finished(self) -> int:
        return sum(count for status, count in self.statuses.items() if status != "received")


def drain(
    database: Database,
    worker: Child,
    expected: int,
    timeout: float,
    *,
    sample_memory: bool = False,
    poll_interval: float = 0.5,
    cpu: CpuTracker | None = None,
) -> Drain:
    """Wait until ``expected`` events are finished in ``webhook_events``; sample the worker's
    memory meanwhile. Raises ``BenchError`` if the worker dies or ``timeout`` passes."""
    started = time.monotonic()
    samples: list[tuple[float, int, int]] = []
    finished = 0
    last_progress = started
    with database.connect() as connection:
        while True:
            now = time.monotonic()
            if sample_memory:
                rss, pss = tree_memory(worker.tree())
                samples.append((now - started, rss, pss))
            if cpu is not None:
                cpu.sample()
            count = database.count_finished(connection)
            if count != finished:
                finished, last_progress = count, now
            if finished >= expected:
                break
            worker.check_alive()
            if now - started > timeout:
                raise BenchError(
                    f"{worker.name}: {finished} of {expected} events finished after {timeout:.0f}s"
                )
            if now - last_progress > 60:
                raise BenchError(f"{worker.name}: no progress for 60s at {finished}/{expected}")
            time.sleep(poll_interval)
    wall = time.monotonic() - started
    cpu_cores = cpu.finish() if cpu is not None else {}
    first, last, _ = database.processing_span()
    return Drain(
        events=finished,
        wall_seconds=wall,
        span_seconds=last - first,
        statuses=database.status_counts(),
        peak_rss_bytes=max((rss for _, rss, _ in samples), default=0),
        peak_pss_bytes=max((pss for _, _, pss in samples), default=0),
        memory_samples=samples,
        cpu_cores=cpu_cores,
    )


def run_drain(
    supervisor: Supervisor,
    services: Services,
    database: Database,
    events: Sequence[Event],
    *,
    name: str,
    concurrency: int,
    work_dir: Path,
    timeout: float,
    sample_memory: bool = False,
    keep_tables: bool = False,
    on_started: Callable[[Child], None] | None = None,
    module: str = "clerk_sync",
    extra_env: Mapping[str, str] | None = None,
) -> tuple[Drain, float]:
    """Empty the queue and the tables (only ``webhook_events`` if ``keep_tables``), publish
    ``events``, start a worker, wait for all of them to be finished, stop the worker. Returns
    the drain and the seconds the publishing took. ``module`` and ``extra_env`` go to
    ``start_worker``."""
    queue = f"bench-{name}-{uuid.uuid4().hex[:6]}"
    services.flush_redis()
    if keep_tables:
        database.empty_inbox()
    else:
        database.empty()
    publish_seconds = prefill(services, queue, events)
    worker = start_worker(
        supervisor,
        services,
        database,
        queue,
        name,
        concurrency,
        work_dir,
        module=module,
        extra_env=extra_env,
    )
    try:
        if on_started is not None:
            on_started(worker)
        cpu = CpuTracker(
            {
                WORKER_GROUP: tree(worker.pid),
                POSTGRES_GROUP: postgres_backends(database.name),
                "redis-server": redis_server(services),
            }
        )
        result = drain(database, worker, len(events), timeout, sample_memory=sample_memory, cpu=cpu)
        result.left_in_queue, result.left_in_ledger = _leftovers(services, queue)
    finally:
        supervisor.stop(worker)
        services.flush_redis()
        services.drop_queue(queue)
    if result.finished != len(events):
        raise BenchError(
            f"{name}: {result.finished} events finished, {len(events)} published; "
            f"rows by svix id prefix: {database.rows_by_prefix()}"
        )
    return result, publish_seconds


def _leftovers(services: Services, queue: str, settle_seconds: float = 10.0) -> tuple[int, int]:
    """Messages still queued and ledger entries not yet dropped, once the worker has had up to
    ``settle_seconds`` to drop the last entries (it does so just after committing)."""
    client = services.redis()
    try:
        deadline = time.monotonic() + settle_seconds
        while True:
            queued = services.queued(queue)
            ledger = 0 if services.amqp_url else int(client.zcard(LEDGER_DUE_KEY))
            if (queued == 0 and ledger == 0) or time.monotonic() > deadline:
                return queued, ledger
            time.sleep(0.2)
    finally:
        client.close()


@dataclass(frozen=True)
class Server:
    child: Child
    url: str
    """``http://127.0.0.1:PORT``"""


def start_ingress(
    supervisor: Supervisor,
    services: Services,
    *,
    name: str,
    queue: str,
    work_dir: Path,
    workers: int,
    threads: int,
    app: str = "ingress",
    database_url: str = "sqlite://",
    module: str = "clerk_sync",
    extra_env: Mapping[str, str] | None = None,
) -> Server:
    """``clerk-sync ingress`` on a free loopback port, answering ``/healthz``; ``app`` "bare"
    or "floor": the same command serving ``bench.bare``'s endpoint instead of the webhook app.
    ``module`` and ``extra_env``: the ingress through another launcher (``bench.stock``)."""
    port = free_port()
    options = [f"--bind=127.0.0.1:{port}", f"--workers={workers}", f"--threads={threads}"]
    if app == "ingress":
        command = python_command("-m", module, "ingress", *options)
    else:
        extra = ["--floor"] if app == "floor" else []
        command = python_command("-m", "bench.bare", *options, *extra)
    env = clerk_sync_env(services, database_url, queue=queue, metrics_dir=work_dir / f"m-{name}")
    env.update(extra_env or {})
    child = supervisor.start(name, command, env)
    url = f"http://127.0.0.1:{port}"
    wait_until(
        lambda: http_status(f"{url}/healthz") == 200,
        WORKER_START_TIMEOUT,
        f"{name} to answer /healthz",
        alive=child.check_alive,
    )
    return Server(child, url)
