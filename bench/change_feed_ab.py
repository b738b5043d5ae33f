"""The change feed's cost on the worker's batch path, A/B in one process (decision 0004):
``apply_batch`` of 100 events per transaction on PostgreSQL, with the feed's triggers and with
them dropped, alternating, each run on a fresh database; CPU of this process and of its
PostgreSQL backend (``/proc``) per event. Less exposed to a loaded machine than the worker
benchmark, whose ratio moves with whatever else runs.

    .venv/bin/python -m bench.change_feed_ab [events] [pairs]
"""

from __future__ import annotations

import os
import statistics
import sys
import time
import uuid

from sqlalchemy import create_engine, text

from bench.events import EventStream
from models.database import make_engine
from models.migrate import upgrade
from workers.processing import apply_batch, describe_event

ADMIN_URL = os.environ.get(
    "BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
RECEIVED_AT_MS = 1_800_000_000_000


def backend_seconds(pid: int) -> float:
    """User + system CPU of a local process (the PostgreSQL backend)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(events: int, triggers: bool, seed: int) -> tuple[float, float, int]:
    """(Python CPU s, PostgreSQL CPU s, changes recorded) of one run."""
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"clerk_sync_feed_ab_{uuid.uuid4().hex[:8]}"
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    url = ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    try:
        upgrade(url)
        engine = make_engine(url, pool_size=1, max_overflow=0)
        with engine.begin() as connection:
            if not triggers:
                names = connection.execute(
                    text(
                        "SELECT tgname, tgrelid::regclass::text FROM pg_trigger "
                        "WHERE tgname LIKE 'clerk_sync_changes_%'"
                    )
                ).all()
                for trigger, table in names:
                    connection.execute(text(f"DROP TRIGGER {trigger} ON {table}"))
        stream = EventStream(f"ab{seed}{int(triggers)}", seed=seed).take(events)
        described = [describe_event(e.svix_id, e.body, RECEIVED_AT_MS) for e in stream]
        with engine.connect() as connection:
            pid = int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())
        python, backend = time.process_time(), backend_seconds(pid)
        for start in range(0, len(described), 100):
            apply_batch(engine, described[start : start + 100], "convexWorkspaceId")
        python, backend = time.process_time() - python, backend_seconds(pid) - backend
        with engine.connect() as connection:
            changes = int(
                connection.execute(text("SELECT count(*) FROM sync_changes")).scalar_one()
            )
        engine.dispose()
        return python, backend, changes
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    events = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    pairs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    measured: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    for pair in range(pairs):
        for triggers in (True, False) if pair % 2 == 0 else (False, True):
            python, backend, changes = run(events, triggers, pair)
            measured[triggers].append((python, backend))
            print(
                f"pair {pair}, triggers {triggers}: Python {python:.2f} s, "
                f"PostgreSQL {backend:.2f} s, {changes} changes",
                flush=True,
            )
    for triggers in (False, True):
        python = statistics.median(p for p, _ in measured[triggers]) * 1000 / events
        backend = statistics.median(b for _, b in measured[triggers]) * 1000 / events
        print(
            f"triggers {triggers}: Python {python:.3f} ms/event, PostgreSQL {backend:.3f} "
            f"ms/event, total {python + backend:.3f} ms/event"
        )


if __name__ == "__main__":
    main()
