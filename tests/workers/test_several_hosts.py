"""Issue #20, several hosts against one broker and one database: workers name themselves
(``clerk-sync@<host>-<pid>``) so that none collide, and the ledger sweeper runs one at a time
however many beats schedule it (a lock in the broker), so no event is re-published twice by
two sweepers at once.

The end-to-end test runs what several hosts would, on one machine: three ``clerk-sync worker``
processes named by default, a shuffled and duplicated history, messages lost from the queue
(what kombu's window loses: only the ledger has them), one worker SIGKILLed mid-backlog, and
two ``clerk-sync sweep`` processes started together."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, select

from clerk_sync.cli.serve import default_node_name
from clerk_sync.core.queue import LEDGER_DUE_KEY, LEDGER_MESSAGES_KEY
from clerk_sync.core.settings import Settings
from ingress import create_app
from models.tables import webhook_events
from tests.conftest import ROOT, queue_length, settings_env, wait_for
from tests.faults import (
    actual_state,
    clerk_stream,
    finished_count,
    inbox_statuses,
    signed_request,
)
from tests.servers import stop_process
from workers.app import create_celery_app, sweep
from workers.sweeping import one_sweeper

pytestmark = [pytest.mark.fault, pytest.mark.worker]

UNACKED_KEY = "unacked"
UNACKED_INDEX_KEY = "unacked_index"
NODE_NAME = re.compile(r"clerk-sync@\S+")
SWEPT = re.compile(r"^re-published (\d+) event", re.MULTILINE)
REPUBLISHED = re.compile(r'"ledger: event re-published".*?"svix_id": "(?P<id>[^"]+)"')


def test_a_worker_names_itself_unless_given_a_name() -> None:
    assert default_node_name([]) == [f"--hostname=clerk-sync@%h-{os.getpid()}"]
    assert default_node_name(["--without-gossip"]) == [f"--hostname=clerk-sync@%h-{os.getpid()}"]
    for given in (["-n", "a@b"], ["-na@b"], ["--hostname", "a@b"], ["--hostname=a@b"]):
        assert default_node_name(given) == [], given


def test_a_sweeper_skips_its_turn_while_another_holds_the_lock(
    settings: Settings, redis_client: redis.Redis[bytes]
) -> None:
    """The lock, not timing: while one sweeper holds it another re-publishes nothing; once it is
    released the next sweeps as usual."""
    client = create_app(settings).test_client()
    stream = clerk_stream(histories=1, organizations=2, events_per_history=10, seed=5)
    for delivery in stream.events:
        body, headers = signed_request(settings.webhook_secrets[0], delivery)
        assert client.post("/webhook/clerk", data=body, headers=headers).status_code == 202
    runtime = create_celery_app(settings).clerk_sync_runtime
    later = time.time() + settings.ledger_redeliver_after_seconds + 1
    ledger = runtime.publisher.ledger
    assert ledger is not None
    with one_sweeper(ledger) as alone:
        assert alone
        assert sweep(runtime, now=later) == 0
        with one_sweeper(ledger) as second:
            assert not second
    assert queue_length(redis_client, settings.queue_name) == len(stream.events)
    assert sweep(runtime, now=later) == len(stream.events)
    assert queue_length(redis_client, settings.queue_name) == 2 * len(stream.events)
    assert sweep(runtime, now=later) == 0, "postponed: not re-published again"


class NamedWorker:
    """``clerk-sync worker`` as an operator starts it: no ``--hostname``."""

    def __init__(self, settings: Settings, log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "clerk_sync", "worker", "--concurrency=2", "--without-mingle"],
            env={**settings_env(settings), "PYTHONUNBUFFERED": "1"},
            cwd=ROOT,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_until_ready(self) -> None:
        wait_for(lambda: "ready." in self.log() or self.process.poll() is not None, 90)
        assert self.process.poll() is None, self.log()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def node_name(self) -> str:
        found = NODE_NAME.search(self.log())
        assert found is not None, self.log()
        return found.group(0)

    def stop(self) -> None:
        stop_process(self.process)
        self._log.close()


@pytest.fixture
def named_workers(tmp_path: Path) -> Iterator[list[NamedWorker]]:
    started: list[NamedWorker] = []
    yield started
    for worker in started:
        worker.stop()


@pytest.mark.timeout(420)
def test_three_workers_two_sweepers_one_killed_converge_and_nothing_is_swept_twice(
    settings: Settings,
    pg_engine: Engine,
    redis_client: redis.Redis[bytes],
    named_workers: list[NamedWorker],
    tmp_path: Path,
) -> None:
    settings = replace(
        settings,
        visibility_timeout_seconds=5,
        retry_backoff_max_seconds=1.0,
        ledger_redeliver_after_seconds=20,
    )
    stream = clerk_stream(histories=16, organizations=4, events_per_history=100, seed=20)
    sent = stream.with_duplicates(0.2, random.Random(20))
    client = create_app(settings).test_client()
    for delivery in sent:
        body, headers = signed_request(settings.webhook_secrets[0], delivery)
        assert client.post("/webhook/clerk", data=body, headers=headers).status_code == 202
    # Lost from the queue, as kombu's window loses messages: only the ledger has them now.
    dropped = 120
    redis_client.ltrim(settings.queue_name, 0, -dropped - 1)

    # Three hosts' workers, started together on the backlog.
    for number in range(3):
        named_workers.append(NamedWorker(settings, tmp_path / f"worker-{number}.log"))
    for worker in named_workers:
        worker.wait_until_ready()
    names = {worker.node_name() for worker in named_workers}
    assert len(names) == 3, names

    # SIGKILL one worker's process group in the middle of the backlog.
    victim = named_workers[0]
    wait_for(lambda: finished_count(pg_engine) >= len(stream.events) // 4, 120, 0.01)
    held = redis_client.hlen(UNACKED_KEY)
    os.killpg(victim.process.pid, signal.SIGKILL)
    victim.process.wait(timeout=10)
    killed_at = time.monotonic()

    # kombu restores what the dead worker held after the visibility timeout; the queue drains.
    wait_for(
        lambda: (
            time.monotonic() - killed_at > settings.visibility_timeout_seconds
            and redis_client.hlen(UNACKED_KEY) == 0
            and queue_length(redis_client, settings.queue_name) == 0
        ),
        120,
        0.2,
    )
    # What is left in the ledger never reached a worker; once it is due, two sweepers (as two
    # beats on two hosts would schedule them) start together.
    in_ledger = {member.decode() for member in redis_client.hkeys(LEDGER_MESSAGES_KEY)}
    wait_for(lambda: redis_client.zcount(LEDGER_DUE_KEY, "-inf", time.time()) == len(in_ledger), 60)
    finished = {i for i, status in inbox_statuses(pg_engine).items() if status != "received"}
    # (Entries a killed worker finished but did not drop are dropped by the sweeper, not sent.)
    left = in_ledger - finished
    assert len(left) >= dropped, "the dropped messages are only in the ledger"
    env = {**settings_env(settings), "CLERK_SYNC_LOG_FORMAT": "json"}
    sweepers = [
        subprocess.Popen(
            [sys.executable, "-m", "clerk_sync", "sweep"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [sweeper.communicate(timeout=120)[0] for sweeper in sweepers]
    assert [sweeper.returncode for sweeper in sweepers] == [0, 0], outputs
    counts = [int(match) for out in outputs for match in SWEPT.findall(out)]
    republished = Counter(m["id"] for out in outputs for m in REPUBLISHED.finditer(out))
    assert sum(counts) == len(left), (counts, outputs)
    assert set(republished) == left
    assert set(republished.values()) == {1}, "no event re-published by both sweepers"
    overlapped = any("another sweeper is running" in out for out in outputs)
    replies = create_celery_app(settings).control.ping(timeout=5)
    alive = {name for reply in replies for name in reply}
    assert alive == names - {victim.node_name()}, "inspect and Flower see each by its name"

    wait_for(lambda: finished_count(pg_engine) == len(stream.events), 120, 0.2)
    wait_for(lambda: redis_client.zcard(LEDGER_DUE_KEY) == 0, 30)
    statuses = inbox_statuses(pg_engine)
    assert set(statuses) == {delivery.svix_id for delivery in stream.events}
    assert {
        svix_id: status
        for svix_id, status in statuses.items()
        if status != ("skipped" if svix_id in stream.skipped else "applied")
    } == {}
    assert actual_state(pg_engine) == stream.expected_state()
    with pg_engine.connect() as connection:
        attempts = Counter(connection.execute(select(webhook_events.c.attempts)).scalars())
    print(
        f"\n[several-hosts] events={len(stream.events)} sent={len(sent)} workers={sorted(names)} "
        f"unacked_at_kill={held} left_in_ledger={len(left)} sweeps={counts} "
        f"sweepers_overlapped={overlapped} attempts={dict(attempts)}"
    )
