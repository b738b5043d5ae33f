"""Celery's control replies (mingle's, ``inspect``'s, Flower's) are consumed without
acknowledgement: the workers' transport must never record one as unacknowledged, or it stays in
kombu's ``unacked`` hash and comes back after the visibility timeout into a reply queue no one
reads. Four workers with mingle and gossip, ``celery inspect ping``, Flower's refresh and a
``control shutdown`` leave the hash and its index empty."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis

from clerk_sync.core.settings import Settings
from tests.conftest import (
    FLOWER_AUTH,
    REDIS_URL,
    ROOT,
    WorkerProcess,
    settings_env,
    start_flower,
    wait_for,
)
from tests.servers import free_port, stop_process

pytestmark = [pytest.mark.worker, pytest.mark.slow]

UNACKED_KEYS = ("unacked", "unacked_index")


def unacked(client: redis.Redis[bytes]) -> dict[str, int]:
    return {
        "unacked": int(client.hlen("unacked")),
        "unacked_index": int(client.zcard("unacked_index")),
    }


def assert_stays_empty(client: redis.Redis[bytes], within: float = 10.0) -> None:
    """Empty within ``within`` seconds, and still empty two seconds later (a record that is
    never acknowledged would stay)."""
    nothing = dict.fromkeys(UNACKED_KEYS, 0)
    deadline = time.monotonic() + within
    while unacked(client) != nothing and time.monotonic() < deadline:
        time.sleep(0.1)
    assert unacked(client) == nothing, redis_records(client)
    time.sleep(2)
    assert unacked(client) == nothing, redis_records(client)


def redis_records(client: redis.Redis[bytes]) -> list[str]:
    """Which queues the stray records name (for the failure message)."""
    return [
        json.loads(record)[2] if record.startswith(b"[") else repr(record[:80])
        for record in client.hvals("unacked")
    ]


def celery(settings: Settings, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "workers.main", *arguments],
        env=settings_env(settings),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture
def own_database(settings: Settings) -> Iterator[tuple[Settings, redis.Redis[bytes]]]:
    """Settings on a Redis database of this test's own: control commands are broadcast to every
    worker of a database, and ``unacked`` is one hash per database."""
    url = REDIS_URL.rsplit("/", 1)[0] + "/12"
    client: redis.Redis[bytes] = redis.Redis.from_url(url)
    client.flushdb()
    yield replace(settings, broker_url=url), client
    client.flushdb()
    client.close()


def test_workers_inspect_flower_and_shutdown_leave_no_unacknowledged_reply(
    own_database: tuple[Settings, redis.Redis[bytes]],
    start_worker: Callable[..., WorkerProcess],
    tmp_path: Path,
) -> None:
    settings, redis_client = own_database
    # With mingle and gossip on, as ``clerk-sync worker`` runs by default: each worker asks the
    # others for their state at start-up and reads the answers from a reply queue.
    names = [f"control-{number}-{uuid.uuid4().hex[:6]}@test" for number in range(4)]
    workers = [start_worker(settings, concurrency=1, options=(), hostname=name) for name in names]
    assert "mingle: sync with" in workers[-1].log(), "the last worker synced with the others"

    ping = celery(settings, "inspect", "ping", "--timeout=5")
    assert ping.returncode == 0, ping.stdout + ping.stderr
    assert ping.stdout.count("pong") == 4, ping.stdout

    port = free_port()
    flower = start_flower(settings, port, tmp_path / "flower.log")
    try:
        auth = FLOWER_AUTH

        def refreshed_workers() -> dict[str, Any] | None:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/workers?refresh=1", headers={"Authorization": auth}
            )
            try:
                with urllib.request.urlopen(request, timeout=15) as response:
                    answer: dict[str, Any] = json.loads(response.read())
            except OSError:
                return None
            return answer if len(answer) == 4 else None

        seen = wait_for(refreshed_workers, 60, interval=0.5)
        assert set(seen) == set(names)
    finally:
        stop_process(flower)
    assert_stays_empty(redis_client)

    # One worker shut down by a control command: it exits, and nothing is left behind.
    # (A worker shutting down sends no reply, so the command itself reports none.)
    celery(settings, "control", "shutdown", f"--destination={names[0]}")
    assert workers[0].process.wait(timeout=30) == 0
    ping = celery(settings, "inspect", "ping", "--timeout=5")
    assert ping.stdout.count("pong") == 3, ping.stdout
    assert_stays_empty(redis_client)
