"""Batching on RabbitMQ, measured: ``python -m bench.rabbitmq_drains [EVENTS]`` drains the same
kind of pre-filled queue with ``clerk-sync worker --concurrency 2`` on Redis (batched) and on
RabbitMQ (batched, and one Celery task per event: ``CLERK_SYNC_BATCH_SIZE=1``, the public-API
alternative), alternating, and prints events/s of each (issue #20; clerk_sync/broker/README.md).
Uses Redis database 4, RabbitMQ's ``/clerk-sync-h4`` virtual host (``--amqp-url``) and a
PostgreSQL database ``clerk_sync_bench_drains``, dropped afterwards."""

from __future__ import annotations

import argparse
import json
import uuid
from pathlib import Path

from bench.events import EventStream
from bench.pipeline import run_drain
from bench.procs import ROOT, Supervisor
from bench.services import Database, Services


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.rabbitmq_drains")
    parser.add_argument("events", type=int, nargs="?", default=5000)
    parser.add_argument("--postgres-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/4")
    parser.add_argument("--amqp-url", default="amqp://guest:guest@127.0.0.1:5672/%2Fclerk-sync-h4")
    arguments = parser.parse_args()
    prefix = "clerk_sync_bench_drains"
    redis = Services(arguments.postgres_url, arguments.redis_url, database_prefix=prefix)
    amqp = Services(
        arguments.postgres_url,
        arguments.redis_url,
        database_prefix=prefix,
        amqp_url=arguments.amqp_url,
    )
    work = ROOT / "bench" / "results" / "drains"
    work.mkdir(parents=True, exist_ok=True)
    supervisor = Supervisor(work)
    database = Database(redis, prefix)
    database.create(work)
    runs = [
        ("redis, batched", redis, "100"),
        ("rabbitmq, batched", amqp, "100"),
        ("rabbitmq, one task per event", amqp, "1"),
        ("redis, batched (again)", redis, "100"),
        ("rabbitmq, batched (again)", amqp, "100"),
    ]
    results = {}
    try:
        for label, services, batch_size in runs:
            # One task per event is many times slower: half as many events.
            count = arguments.events if batch_size != "1" else arguments.events // 2
            events = EventStream(uuid.uuid4().hex[:6]).take(count)
            drained, publish_seconds = run_drain(
                supervisor,
                services,
                database,
                events,
                name=label.split(",")[0] + "-" + batch_size,
                concurrency=2,
                work_dir=work,
                timeout=900,
                extra_env={"CLERK_SYNC_BATCH_SIZE": batch_size},
            )
            results[label] = {
                "events": count,
                "events_per_s": round(drained.events_per_second),
                "prefill_per_s": round(count / publish_seconds),
                "cpu_ms_per_event": round(drained.cpu_ms_per_event, 3),
                "statuses": drained.statuses,
            }
            print(label, results[label], flush=True)
    finally:
        supervisor.close()
        database.drop()
    Path(work / "drains.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
