"""Baselines without clerk-sync: the least a PostgreSQL- and Redis-backed pipeline can cost here.

* ``upsert_loop``: one process, one psycopg connection, one single-row ``INSERT ... ON CONFLICT
  DO UPDATE`` per transaction (autocommit), the floor for "one durable commit per event".
* ``python -m bench.raw consume``: the end-to-end baseline's consumer: ``BRPOP`` from a Redis
  list, the same upsert, commit, repeat.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Sequence
from types import FrameType

import psycopg
import redis

from bench.events import Event

CREATE_RAW_TABLE = """
CREATE TABLE IF NOT EXISTS bench_raw_events (
    svix_id text PRIMARY KEY,
    event_type text,
    payload text NOT NULL,
    received_at timestamptz NOT NULL,
    processed_at timestamptz NOT NULL
)
"""

UPSERT = """
INSERT INTO bench_raw_events (svix_id, event_type, payload, received_at, processed_at)
VALUES (%s, %s, %s, now(), clock_timestamp())
ON CONFLICT (svix_id) DO UPDATE
SET event_type = EXCLUDED.event_type, payload = EXCLUDED.payload,
    processed_at = EXCLUDED.processed_at
"""


def prepare_raw_table(database_url: str) -> None:
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute(CREATE_RAW_TABLE)
        connection.execute("TRUNCATE bench_raw_events")


def upsert_loop(database_url: str, events: Sequence[Event]) -> float:
    """Upsert each event in a transaction of its own; returns events per second."""
    prepare_raw_table(database_url)
    with psycopg.connect(database_url, autocommit=True) as connection:
        started = time.perf_counter()
        for event in events:
            connection.execute(UPSERT, (event.svix_id, event.event_type, event.body), prepare=True)
        elapsed = time.perf_counter() - started
    return len(events) / elapsed if elapsed else 0.0


def consume(redis_url: str, list_key: str, database_url: str) -> None:
    """BRPOP ``[svix_id, event_type, body]`` messages from ``list_key`` and upsert each one in
    its own transaction, until SIGTERM."""
    stopping = False

    def stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    client: redis.Redis[bytes] = redis.Redis.from_url(redis_url)
    with psycopg.connect(database_url, autocommit=True) as connection:
        print("raw consumer ready.", flush=True)
        while not stopping:
            popped = client.brpop([list_key], timeout=1)
            if popped is None:
                continue
            svix_id, event_type, body = json.loads(popped[1])
            connection.execute(UPSERT, (svix_id, event_type, body), prepare=True)
    client.close()


def main(argv: Sequence[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.raw")
    commands = parser.add_subparsers(dest="command", required=True)
    consumer = commands.add_parser("consume", help="the end-to-end baseline's consumer")
    consumer.add_argument("--redis-url", required=True)
    consumer.add_argument("--list", required=True)
    consumer.add_argument("--database-url", required=True)
    arguments = parser.parse_args(argv)
    consume(arguments.redis_url, arguments.list, arguments.database_url)


if __name__ == "__main__":
    main(sys.argv[1:])
