"""Issue #5: nothing lost, nothing applied twice, under faults and load.

Each test breaks one real component of the pipeline (Redis, PostgreSQL, a worker) or loads it,
and then checks the end state against the truth: ``webhook_events`` holds every svix id exactly
once, finished, and the synced tables equal in-order application of the history (computed by
``tests.models.histories.ClerkHistory``). Run them alone with ``pytest -m fault``.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, select, text

import tests.conftest
from clerk_sync.core.queue import LEDGER_DUE_KEY
from clerk_sync.core.settings import Settings
from models.database import make_engine
from models.tables import webhook_events
from tests.conftest import Send, WorkerProcess, empty_tables, queue_length, wait_for
from tests.factories import event, organization_data
from tests.faults import (
    IngressServer,
    RedisServer,
    Stream,
    TcpProxy,
    WebhookClient,
    actual_state,
    clerk_stream,
    elapsed,
    finished_count,
    inbox_statuses,
    lines,
    signed_request,
    status_counts,
)
from tests.models.histories import Delivery
from tests.models.support import deliver
from tests.workers.conftest import enqueue_through
from workers.app import create_celery_app, sweep

pytestmark = [pytest.mark.fault, pytest.mark.worker]

StartWorker = Callable[..., WorkerProcess]

UNACKED_KEY = "unacked"
"""kombu's Redis transport keeps delivered, unacknowledged messages in this hash until acked."""
UNACKED_INDEX_KEY = "unacked_index"
"""... and their delivery times in this sorted set (what the visibility timeout is checked on)."""

FEW_DELETIONS = (0, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 4, 4, 5, 5, 7, 7) * 8 + (6, 8)
"""History actions with deletions of whole organizations and of users rare (1 in 138 each), so
that long histories keep live organizations to compare and pile many events onto each."""


def report(name: str, **numbers: Any) -> None:
    """What a fault test measured, on one line (shown with ``pytest -s``)."""
    print(f"\n[{name}] " + " ".join(f"{key}={value}" for key, value in numbers.items()))


@pytest.fixture
def enqueue(settings: Settings) -> Callable[[list[Delivery]], None]:
    """Queue deliveries through the real ingress app (in process) on the test Redis."""
    return enqueue_through(settings)


def assert_converged(engine: Engine, stream: Stream) -> None:
    """Every event recorded once and finished as expected; tables equal the history's truth."""
    statuses = inbox_statuses(engine)
    assert set(statuses) == {delivery.svix_id for delivery in stream.events}
    wrong = {
        svix_id: status
        for svix_id, status in statuses.items()
        if status != ("skipped" if svix_id in stream.skipped else "applied")
    }
    assert wrong == {}
    assert actual_state(engine) == stream.expected_state()


def all_finished(engine: Engine, count: int) -> Callable[[], bool]:
    return lambda: finished_count(engine) >= count


# -- 1. broker down -------------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_broker_outage_refuses_with_503_and_redelivery_applies_each_event_once(
    settings: Settings,
    pg_engine: Engine,
    tmp_path: Path,
    start_worker: StartWorker,
    start_ingress: Callable[..., IngressServer],
) -> None:
    """Kill our own Redis (no persistence) under a running ingress and worker: every POST is
    503 with Retry-After and nothing is acknowledged. Start Redis again on the same port and
    redeliver the refused requests as Svix would (same svix-id and body, fresh signature), plus
    the ones accepted before the outage: each event is applied exactly once."""
    broker = RedisServer(tmp_path)
    broker.start()
    try:
        settings = replace(settings, broker_url=broker.url)
        stream = clerk_stream(histories=2, organizations=3, events_per_history=20, seed=1)
        rng = random.Random(1)
        events = list(stream.events)
        rng.shuffle(events)
        before, during = events[: len(events) // 2], events[len(events) // 2 :]
        secret = settings.webhook_secrets[0]

        worker = start_worker(settings, concurrency=1)
        ingress = start_ingress(settings)
        client = WebhookClient(ingress.url)
        assert [client.post(*signed_request(secret, d))[0] for d in before] == [202] * len(before)
        wait_for(all_finished(pg_engine, len(before)), 60)

        broker.kill()
        outage = time.monotonic()
        answers = []
        slowest = 0.0
        for delivery in during:
            started = time.monotonic()
            answers.append(client.post(*signed_request(secret, delivery)))
            slowest = max(slowest, time.monotonic() - started)
        assert [status for status, _ in answers] == [503] * len(during)
        assert all(int(headers["retry-after"]) > 0 for _, headers in answers)
        assert WebhookClient(ingress.url).post(b"", {})[0] == 400  # unsigned: still refused
        time.sleep(max(0.0, 3 - elapsed(outage)))  # let the worker notice the broker is gone

        broker.start()
        restarted = time.monotonic()
        outage_seconds = elapsed(outage)
        with broker.client() as fresh:
            assert fresh.dbsize() == 0, "Redis came back empty (no persistence)"
        # Svix retries the refused messages (and, for good measure, resends the accepted ones).
        redelivered = during + before
        rng.shuffle(redelivered)
        statuses = [client.post(*signed_request(secret, d))[0] for d in redelivered]
        assert statuses == [202] * len(redelivered), Counter(statuses)

        wait_for(all_finished(pg_engine, len(events)), 120, interval=0.5)
        applied_after = elapsed(restarted)
        assert worker.process.poll() is None, "the worker rode out the outage"
        assert_converged(pg_engine, stream)
        with pg_engine.connect() as connection:
            attempts = set(connection.execute(select(webhook_events.c.attempts)).scalars())
        assert attempts == {1}, "each event was processed exactly once"
        assert "dead-lettered" not in worker.log()
        with broker.client() as fresh:
            wait_for(lambda: fresh.zcard(LEDGER_DUE_KEY) == 0, 15)
        report(
            "broker-outage",
            events=len(events),
            refused_503=len(during),
            slowest_503_s=round(slowest, 2),
            outage_s=outage_seconds,
            all_applied_after_restart_s=applied_after,
        )
    finally:
        broker.kill()


# -- 2. database down -----------------------------------------------------------------------------

RETRY_LINE = re.compile(
    r"Task clerk_sync\.apply_event\[(?P<task>[^\]]+)\] retry: Retry in (?P<s>[\d.]+)s"
)


def retry_countdowns(log: str) -> dict[str, list[float]]:
    """Per task id, the countdowns of its Celery retries, in order."""
    countdowns: dict[str, list[float]] = defaultdict(list)
    for match in RETRY_LINE.finditer(log):
        countdowns[match["task"]].append(float(match["s"]))
    return countdowns


@pytest.fixture
def pg_proxy(settings: Settings) -> Iterator[TcpProxy]:
    port = int(settings.database_url.rsplit("@", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    proxy = TcpProxy(port)
    yield proxy
    proxy.close()


@pytest.mark.timeout(240)
def test_database_outage_is_retried_with_backoff_and_nothing_is_dead_lettered(
    settings: Settings,
    pg_engine: Engine,
    redis_client: redis.Redis[bytes],
    pg_proxy: TcpProxy,
    enqueue: Callable[[list[Delivery]], None],
    start_worker: StartWorker,
) -> None:
    """The worker reaches PostgreSQL through a proxy. (1) Events are queued, the proxy is cut,
    the worker starts: it retries with growing delays and dead-letters nothing while the retry
    budget (>= 10.75 s) outlasts the outage (6 s); once restored, every event is applied.
    (2) A second outage cuts the worker's open connections in the middle of a backlog."""
    outage_seconds = 6.0
    worker_settings = replace(
        settings,
        database_url=pg_proxy.url_for(settings.database_url),
        max_retries=12,
        retry_backoff_seconds=0.5,
        retry_backoff_max_seconds=2.0,
    )
    # The smallest possible sum of the countdowns (each at least half its ceiling).
    budget = sum(
        min(worker_settings.retry_backoff_max_seconds, worker_settings.retry_backoff_seconds * 2**n)
        / 2
        for n in range(worker_settings.max_retries)
    )
    assert budget > outage_seconds + 3
    stream = clerk_stream(histories=3, organizations=3, events_per_history=40, seed=2)
    rng = random.Random(2)
    first, second = stream.events[:24], stream.events[24:]
    rng.shuffle(first)
    rng.shuffle(second)

    enqueue(first)
    pg_proxy.cut()
    worker = start_worker(worker_settings, concurrency=2)
    cut_at = time.monotonic()
    wait_for(lambda: len(retry_countdowns(worker.log())) >= 2, 20)
    time.sleep(max(0.0, outage_seconds - elapsed(cut_at)))
    assert status_counts(pg_engine) == {}, "nothing reached the database during the outage"
    countdowns = retry_countdowns(worker.log())
    pg_proxy.restore()
    restored_at = time.monotonic()
    wait_for(all_finished(pg_engine, len(first)), 60, interval=0.2)
    first_recovery = elapsed(restored_at)

    assert "dead" not in status_counts(pg_engine)
    assert "dead-lettered" not in worker.log()
    retried = sum(len(c) for c in countdowns.values())
    assert retried >= 2
    # Backoff: the ceilings are 0.5, 1, 2, 2, ... s with jitter in [ceiling/2, ceiling].
    for sequence in countdowns.values():
        assert sequence[0] <= 0.5
        assert all(countdown <= 2.0 for countdown in sequence)
        if len(sequence) >= 3:
            assert sequence[2] >= 1.0, sequence
    longest = max(len(sequence) for sequence in countdowns.values())

    # (2) Cut the open connections while a backlog is being applied.
    enqueue(second)
    wait_for(lambda: finished_count(pg_engine) >= len(first) + len(second) // 3, 60, 0.02)
    pg_proxy.cut()
    cut_again = time.monotonic()
    in_flight = len(stream.events) - finished_count(pg_engine)
    time.sleep(3)
    pg_proxy.restore()
    wait_for(all_finished(pg_engine, len(stream.events)), 90, interval=0.2)
    second_recovery = elapsed(cut_again)
    # By retries, not by a message stuck on a dead connection until the visibility timeout.
    assert second_recovery < settings.visibility_timeout_seconds / 2, second_recovery

    assert_converged(pg_engine, stream)
    assert "dead-lettered" not in worker.log()
    wait_for(lambda: redis_client.zcard(LEDGER_DUE_KEY) == 0, 15)
    report(
        "database-outage",
        events=len(stream.events),
        retry_budget_min_s=round(budget, 2),
        outage_s=outage_seconds,
        retries_during_outage=retried,
        most_retries_of_one_task=longest,
        applied_after_restore_s=first_recovery,
        second_cut_unfinished=in_flight,
        second_cut_recovered_in_s=second_recovery,
        proxy_refused=pg_proxy.refused,
        total_retries=sum(len(c) for c in retry_countdowns(worker.log()).values()),
    )


@pytest.mark.timeout(120)
def test_database_outage_longer_than_the_retry_budget_is_recovered_by_the_ledger(
    settings: Settings,
    pg_engine: Engine,
    redis_client: redis.Redis[bytes],
    pg_proxy: TcpProxy,
    enqueue: Callable[[list[Delivery]], None],
    start_worker: StartWorker,
) -> None:
    """When the retries run out while PostgreSQL is still unreachable, the dead-letter write
    fails too and Celery drops the message; the ledger still holds the event, and the sweeper
    publishes it again once the database is back. Nothing is dead-lettered, nothing lost."""
    worker_settings = replace(
        settings,
        database_url=pg_proxy.url_for(settings.database_url),
        max_retries=1,
        retry_backoff_seconds=0.2,
        retry_backoff_max_seconds=0.4,
    )
    stream = clerk_stream(histories=1, organizations=2, events_per_history=10, seed=8)
    enqueue(stream.events)
    pg_proxy.cut()
    worker = start_worker(worker_settings, concurrency=2)
    wait_for(
        lambda: (
            queue_length(redis_client, settings.queue_name) == 0
            and redis_client.hlen(UNACKED_KEY) == 0
            and len(list(lines(worker.log(), "raised unexpected"))) == len(stream.events)
        ),
        60,
        interval=0.2,
    )
    assert redis_client.zcard(LEDGER_DUE_KEY) == len(stream.events), "all still in the ledger"
    pg_proxy.restore()
    assert status_counts(pg_engine) == {}

    runtime = create_celery_app(settings).clerk_sync_runtime
    later = time.time() + settings.ledger_redeliver_after_seconds + 1
    assert sweep(runtime, now=later) == len(stream.events)
    wait_for(all_finished(pg_engine, len(stream.events)), 60, interval=0.2)
    wait_for(lambda: redis_client.zcard(LEDGER_DUE_KEY) == 0, 15)
    assert_converged(pg_engine, stream)
    report(
        "database-outage-beyond-budget", events=len(stream.events), republished=len(stream.events)
    )


IDLE_LOCK_HOLDERS = text(
    "SELECT count(*) FROM pg_locks JOIN pg_stat_activity USING (pid) "
    "WHERE locktype = 'advisory' AND granted AND datname = current_database() "
    "AND xact_start IS NOT NULL AND wait_event = 'ClientRead'"
)
"""Sessions of this test database that hold an advisory (organization) lock and wait, inside a
transaction, for their client: between two statements, or in the middle of a pipeline."""
STUCK_LOCK_HOLDERS = text(
    "SELECT count(*) FROM pg_locks JOIN pg_stat_activity USING (pid) "
    "WHERE locktype = 'advisory' AND granted AND datname = current_database() "
    "AND xact_start IS NOT NULL AND wait_event = 'ClientRead' "
    "AND state_change < clock_timestamp() - interval '1 second'"
)
"""``IDLE_LOCK_HOLDERS`` that have waited for over a second: a frozen client, not a working
worker between two statements of its batch. (Each check needs a transaction of its own:
``pg_stat_activity`` is read once per transaction.)"""


def count(engine: Engine, query: Any) -> int:
    """``query``'s count, read in a transaction of its own."""
    with engine.connect() as connection:
        return int(connection.execute(query).scalar_one())


@pytest.fixture
def worker_env(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, str]], None]:
    """Add variables to the environment of the workers started from now on."""

    def add(extra: dict[str, str]) -> None:
        original = tests.conftest.settings_env
        monkeypatch.setattr(
            tests.conftest, "settings_env", lambda settings: {**original(settings), **extra}
        )

    return add


@pytest.mark.timeout(180)
def test_frozen_worker_holding_an_organization_lock_does_not_block_it(
    settings: Settings,
    pg_engine: Engine,
    redis_client: redis.Redis[bytes],
    enqueue: Callable[[list[Delivery]], None],
    start_worker: StartWorker,
    worker_env: Callable[[dict[str, str]], None],
) -> None:
    """A worker stops dead in the middle of a transaction while it holds organization locks
    (SIGSTOP to its process group here; in production a paused container, a stalled VM, a
    network that silently drops its packets). Its session is ended once it has waited for its
    client for ``CLERK_SYNC_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS`` (5 s here): by PostgreSQL
    between two statements, and by the other worker, on a lock timeout, in the middle of a
    pipeline (an ``executemany``; ``models.database.end_stalled_lock_holders``), where
    PostgreSQL 15 has no timeout. That releases the locks, so the other worker, after a few
    lock timeouts, applies the organizations' later events instead of timing out on the locks
    until they are dead-lettered. The frozen worker, resumed, retries; nothing is applied twice.
    Without the timeout, the locks stay held until PostgreSQL notices the dead client (TCP
    keepalive: two hours by default), and a frozen process's for good."""
    settings = replace(settings, max_retries=6)
    worker_env({"CLERK_SYNC_DB_IDLE_IN_TRANSACTION_TIMEOUT_MS": "5000"})
    stream = clerk_stream(
        histories=1, organizations=2, events_per_history=400, kinds=FEW_DELETIONS, seed=10
    )
    earlier, later = stream.events[:300], stream.events[300:]
    random.Random(10).shuffle(earlier)
    enqueue(earlier)

    frozen = start_worker(settings, concurrency=1)
    group = frozen.process.pid
    wait_for(lambda: finished_count(pg_engine) >= 1, 30, 0.01)
    for _attempt in range(300):
        os.killpg(group, signal.SIGSTOP)
        time.sleep(0.05)
        if count(pg_engine, IDLE_LOCK_HOLDERS):
            break
        os.killpg(group, signal.SIGCONT)
        time.sleep(random.uniform(0, 0.02))
    else:
        pytest.fail("never caught the worker holding a lock")
    frozen_at = time.monotonic()
    held = {_svix_id_of_unacked(raw) for raw in redis_client.hvals(UNACKED_KEY)}
    try:
        enqueue(later)  # the same organizations and users
        other = start_worker(settings, concurrency=2)
        wait_for(lambda: count(pg_engine, STUCK_LOCK_HOLDERS) == 0, 15)
        released_after = elapsed(frozen_at)
        # The later events are applied by the other worker, but one: the frozen worker's
        # pending BRPOP took it off the queue as the first arrived, and holds it unread.
        later_ids = {delivery.svix_id for delivery in later}

        def later_finished() -> int:
            statuses = inbox_statuses(pg_engine)
            return sum(statuses.get(i) in ("applied", "skipped") for i in later_ids)

        wait_for(lambda: later_finished() >= len(later) - 1, 30, interval=0.2)
        others_applied_after = elapsed(frozen_at)
        assert status_counts(pg_engine).get("dead", 0) == 0
    finally:
        os.killpg(group, signal.SIGCONT)
    wait_for(all_finished(pg_engine, len(stream.events)), 90, interval=0.2)
    assert_converged(pg_engine, stream)
    report(
        "frozen-worker",
        events=len(stream.events),
        held_by_the_frozen_worker=len(held),
        lock_released_after_s=released_after,
        later_events_applied_after_s=others_applied_after,
        lock_timeouts_of_the_other_worker=len(list(lines(other.log(), "LockNotAvailable"))),
        sessions_ended_by_the_other_worker=len(list(lines(other.log(), "sessions stalled"))),
    )


# -- 3. worker killed -----------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_worker_killed_mid_backlog_loses_nothing_and_applies_nothing_twice(
    settings: Settings,
    pg_engine: Engine,
    redis_client: redis.Redis[bytes],
    enqueue: Callable[[list[Delivery]], None],
    start_worker: StartWorker,
) -> None:
    """SIGKILL a worker's whole process group (main process and pool) in the middle of a
    backlog, twice, each time starting another: the messages a killed worker held come back
    after the visibility timeout (5 s here) and kombu's next scan (every 10 s); anything lost in
    kombu's window would stay in the ledger, and the sweeper (run as beat would, later) publishes
    it again. In the end every event is applied, once."""
    settings = replace(settings, visibility_timeout_seconds=5, retry_backoff_max_seconds=1.0)
    stream = clerk_stream(histories=6, organizations=4, events_per_history=50, seed=3)
    events = list(stream.events)
    random.Random(3).shuffle(events)
    enqueue(events)
    assert queue_length(redis_client, settings.queue_name) == len(events)

    def held_since(started: float) -> set[str]:
        """svix ids of the messages taken since ``started`` (wall clock) and not acknowledged."""
        tags = redis_client.zrangebyscore(UNACKED_INDEX_KEY, started, "+inf")
        raws = redis_client.hmget(UNACKED_KEY, tags) if tags else []
        return {_svix_id_of_unacked(raw) for raw in raws if raw is not None}

    def busy_past(finished: float, started: float) -> bool:
        """At least ``finished`` events done, and the worker started at ``started`` holds
        messages (the dead ones' stay in kombu's hash until restored)."""
        return finished_count(pg_engine) >= finished and bool(
            redis_client.zcount(UNACKED_INDEX_KEY, started, "+inf")
        )

    kills = []
    started = time.time()
    worker = start_worker(settings, concurrency=2)
    for fraction in (1 / 3, 2 / 3):
        wait_for(partial(busy_past, len(events) * fraction, started), 90, 0.01)
        os.killpg(worker.process.pid, signal.SIGKILL)
        worker.process.wait(timeout=10)
        killed_at = time.monotonic()
        held = held_since(started)
        # A COMMIT already sent when the worker died still completes in PostgreSQL.
        time.sleep(0.5)
        # (Events a batch deferred behind another batch's locks are recorded as "received".)
        finished = {
            svix_id: status
            for svix_id, status in inbox_statuses(pg_engine).items()
            if status in ("applied", "skipped")
        }
        time.sleep(0.5)
        assert finished_count(pg_engine) == len(finished), "nothing runs after the SIGKILL"
        kills.append(
            {
                "finished_at_kill": len(finished),
                "held": len(held),
                "held_already_committed": sum(finished.get(i) == "applied" for i in held),
            }
        )
        started = time.time()
        worker = start_worker(settings, concurrency=2)
    # Back once kombu has restored them: the visibility timeout passed, nothing unacked is
    # left over from the dead workers, and the queue has drained again.
    wait_for(
        lambda: (
            time.monotonic() - killed_at > settings.visibility_timeout_seconds
            and redis_client.hlen(UNACKED_KEY) == 0
            and queue_length(redis_client, settings.queue_name) == 0
        ),
        90,
        interval=0.2,
    )
    restored_within = elapsed(killed_at)
    # Nothing queued, nothing held: what is not finished now was lost in kombu's window.
    lost = len(events) - finished_count(pg_engine)

    # What beat does later (here: as if ten minutes had passed): whatever never finished is
    # still in the ledger and is published again; finished entries are dropped.
    runtime = create_celery_app(settings).clerk_sync_runtime
    republished = sweep(runtime, now=time.time() + settings.ledger_redeliver_after_seconds + 1)
    assert republished == lost
    wait_for(all_finished(pg_engine, len(events)), 60, interval=0.2)
    wait_for(lambda: redis_client.zcard(LEDGER_DUE_KEY) == 0, 15)

    assert_converged(pg_engine, stream)
    with pg_engine.connect() as connection:
        attempts = Counter(connection.execute(select(webhook_events.c.attempts)).scalars())
    report(
        "worker-killed",
        events=len(events),
        kills=kills,
        restored_within_s=restored_within,
        lost_in_kombu_window=lost,
        republished_by_sweeper=republished,
        attempts=dict(attempts),
    )


@pytest.mark.timeout(120)
def test_worker_sigterm_finishes_or_returns_what_it_holds_at_once(
    settings: Settings,
    pg_engine: Engine,
    redis_client: redis.Redis[bytes],
    enqueue: Callable[[list[Delivery]], None],
    start_worker: StartWorker,
) -> None:
    """SIGTERM (a deploy, ``docker stop``) in the middle of a backlog: Celery's warm shutdown
    finishes the tasks it runs and puts the messages it reserved back on the queue straight
    away, so nothing waits for the visibility timeout (the default 60 s of the test settings).

    Celery, closing its consumer, gives up every task a pool process has not reported as
    started, although one already written to the process's pipe still runs: its messages go back
    on the queue (copies of applied events, ignored when delivered again). The worker's pool
    (``clerk_sync.broker.pool``) finishes writing a batch it had started to write and reads
    results until its processes exit, so the stop takes about as long as the batches in hand,
    not forever (a half-written batch) or 30 s (a result nobody reads), as with Celery's own
    prefork pool."""
    stream = clerk_stream(histories=4, organizations=4, events_per_history=50, seed=7)
    events = list(stream.events)
    random.Random(7).shuffle(events)
    enqueue(events)
    worker = start_worker(settings, concurrency=2)
    wait_for(
        lambda: finished_count(pg_engine) >= len(events) // 3 and redis_client.hlen(UNACKED_KEY),
        90,
        0.01,
    )
    signalled = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(timeout=20) == 0
    stopped = time.monotonic()
    statuses = inbox_statuses(pg_engine)
    unfinished = {
        e.svix_id for e in events if statuses.get(e.svix_id) not in ("applied", "skipped")
    }
    assert redis_client.hlen(UNACKED_KEY) == 0, "nothing left waiting for the visibility timeout"
    queued = Counter(queued_svix_ids(redis_client, settings.queue_name))
    assert set(queued) >= unfinished, "every unfinished event is back on the queue"
    assert all(count == 1 for count in queued.values())
    finished_at_stop = len(events) - len(unfinished)

    start_worker(settings, concurrency=2)
    wait_for(all_finished(pg_engine, len(events)), 60, interval=0.2)
    assert elapsed(stopped) < settings.visibility_timeout_seconds
    wait_for(lambda: redis_client.zcard(LEDGER_DUE_KEY) == 0, 15)
    assert_converged(pg_engine, stream)
    report(
        "worker-sigterm",
        events=len(events),
        finished_at_stop=finished_at_stop,
        stopped_within_s=round(stopped - signalled, 2),
        all_finished_after_stop_s=elapsed(stopped),
    )


@pytest.mark.timeout(120)
def test_worker_sigterm_while_a_batch_is_half_written_to_a_pool_process_stops_at_once(
    settings: Settings,
    pg_engine: Engine,
    redis_client: redis.Redis[bytes],
    send: Send,
    start_worker: StartWorker,
) -> None:
    """Batches of large payloads (about 600 KB, ten times what a pipe holds) and one pool
    process: while it applies a batch, the next one is written to its pipe only in part, so a
    SIGTERM almost always finds a batch half-written. Celery's own prefork pool then never
    stops (its process waits for the rest of the batch); ``clerk_sync.broker.pool`` finishes the
    write and stops once the batches in hand are done."""
    notes = {"notes": "n" * 6000}
    svix_ids = [
        send(event("organization.created", organization_data(public_metadata=notes)))
        for _ in range(1500)
    ]
    worker = start_worker(settings, concurrency=1)
    wait_for(lambda: finished_count(pg_engine) >= settings.batch_size, 60, 0.005)
    signalled = time.monotonic()
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(timeout=20) == 0
    stopped_within = time.monotonic() - signalled
    statuses = inbox_statuses(pg_engine)
    unfinished = {svix_id for svix_id in svix_ids if statuses.get(svix_id) != "applied"}
    assert unfinished, "the backlog outlasted the stop (else nothing was in the pipe)"
    assert redis_client.hlen(UNACKED_KEY) == 0
    assert set(queued_svix_ids(redis_client, settings.queue_name)) >= unfinished

    start_worker(settings, concurrency=1)
    wait_for(all_finished(pg_engine, len(svix_ids)), 60, interval=0.2)
    report(
        "worker-sigterm-half-written",
        events=len(svix_ids),
        unfinished_at_stop=len(unfinished),
        stopped_within_s=round(stopped_within, 2),
    )


@pytest.mark.timeout(120)
def test_pool_process_killed_alone_has_its_task_requeued_at_once(
    settings: Settings,
    pg_engine: Engine,
    redis_client: redis.Redis[bytes],
    enqueue: Callable[[list[Delivery]], None],
    start_worker: StartWorker,
) -> None:
    """SIGKILL one pool process (as the OOM killer would) while it runs a task: the main process
    notices, re-queues the task (``task_reject_on_worker_lost``) and forks a replacement, so the
    event is applied long before the visibility timeout (60 s in the test settings)."""
    # A backlog long enough (seconds of work for the batched worker, which takes up to 100
    # messages per round trip) that the kills below land on running tasks before it drains:
    # a kill can find its process between batches, and the next try needs messages in flight.
    stream = clerk_stream(histories=320, organizations=4, events_per_history=100, seed=9)
    enqueue(stream.events)
    worker = start_worker(settings, concurrency=2)
    started = time.monotonic()
    lost = "raised error: WorkerLostError"
    for _ in range(10):  # until a kill lands on a running task
        wait_for(lambda: redis_client.hlen(UNACKED_KEY) > 0, 30, 0.005)
        exits = worker.log().count("exited with")
        os.kill(busiest_pool_process(worker.process.pid), signal.SIGKILL)
        wait_for(lambda: worker.log().count("exited with") > exits, 10)  # noqa: B023
        time.sleep(0.2)
        if lost in worker.log():
            break
    lost_tasks = len(list(lines(worker.log(), lost)))
    assert lost_tasks >= 1, "a kill landed on a running task"
    wait_for(all_finished(pg_engine, len(stream.events)), 60, interval=0.2)
    assert elapsed(started) < settings.visibility_timeout_seconds
    assert worker.process.poll() is None
    wait_for(lambda: redis_client.zcard(LEDGER_DUE_KEY) == 0, 15)
    assert_converged(pg_engine, stream)
    report(
        "pool-process-killed",
        events=len(stream.events),
        tasks_lost_with_their_process=lost_tasks,
        all_finished_s=elapsed(started),
    )


def queued_svix_ids(client: redis.Redis[bytes], queue_name: str) -> list[str]:
    """The svix ids of the messages waiting on a kombu Redis queue."""
    return [_svix_id_of(json.loads(raw)) for raw in client.lrange(queue_name, 0, -1)]


def pool_processes(pid: int) -> list[int]:
    """The child processes of ``pid`` (a Celery worker's prefork pool)."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    assert children, "the worker has pool processes"
    return children


def busiest_pool_process(pid: int, window: float = 0.03) -> int:
    """The pool process of worker ``pid`` that used the most CPU time over ``window`` seconds:
    one applying a batch, rather than one waiting for its next."""

    def cpu_ticks(child: int) -> int:
        try:
            fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0
        return int(fields[11]) + int(fields[12])

    children = pool_processes(pid)
    before = {child: cpu_ticks(child) for child in children}
    time.sleep(window)
    return max(children, key=lambda child: cpu_ticks(child) - before[child])


def _svix_id_of_unacked(raw: bytes) -> str:
    """The svix id (first task argument) of a message in kombu's ``unacked`` hash."""
    message, _exchange, _routing_key = json.loads(raw)
    return _svix_id_of(message)


def _svix_id_of(message: dict[str, Any]) -> str:
    """The svix id (first task argument) of a kombu message as Redis stores it."""
    args, _kwargs, _embed = json.loads(base64.b64decode(message["body"]))
    return str(args[0])


# -- 4. concurrency -------------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_competing_workers_on_one_shuffled_stream_equal_in_order_application(
    settings: Settings,
    pg_engine: Engine,
    sqlite_url: str,
    redis_client: redis.Redis[bytes],
    enqueue: Callable[[list[Delivery]], None],
    start_worker: StartWorker,
) -> None:
    """Two worker processes with two pool processes each (four consumers) take one shuffled
    stream, with Svix-style duplicates, in which 300 events hit the same four organizations
    and six users: the tables equal in-order application, computed by applying the history in
    order on SQLite through the same code path."""
    # Seed 6: four organizations created, one deleted, three left with twelve members; three of
    # the users deleted (with their memberships everywhere) and six live at the end.
    stream = clerk_stream(
        histories=1, organizations=4, events_per_history=300, users=6, kinds=FEW_DELETIONS, seed=6
    )
    in_order = make_engine(sqlite_url)
    try:
        empty_tables(in_order)
        for delivery in stream.events:
            assert deliver(in_order, delivery.body, svix_id=delivery.svix_id) == "applied"
        expected = actual_state(in_order)
    finally:
        in_order.dispose()
    assert expected == stream.expected_state(), "in-order application equals Clerk's state"
    assert len(expected[1]) > 3, "the history leaves live memberships to compare"

    rng = random.Random(4)
    sent = stream.with_duplicates(0.1, rng)
    workers = [start_worker(settings, concurrency=2) for _ in range(2)]
    started = time.monotonic()
    enqueue(sent)
    wait_for(all_finished(pg_engine, len(stream.events)), 120, interval=0.2)
    wait_for(lambda: queue_length(redis_client, settings.queue_name) == 0, 30)
    wait_for(lambda: redis_client.zcard(LEDGER_DUE_KEY) == 0, 30)
    took = elapsed(started)

    assert_converged(pg_engine, stream)
    logs = [worker.log() for worker in workers]
    report(
        "concurrency",
        events=len(stream.events),
        sent_with_duplicates=len(sent),
        organizations_left=len(stream.organizations),
        memberships_left=len(stream.memberships),
        users_left=len(stream.users),
        retries=sum(len(retry_countdowns(log)) for log in logs),
        seconds=took,
    )


# -- 5. load --------------------------------------------------------------------------------------

LOAD_CLIENTS = 16


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_ten_thousand_posts_from_sixteen_clients_converge(
    settings: Settings,
    pg_engine: Engine,
    redis_client: redis.Redis[bytes],
    start_worker: StartWorker,
    start_ingress: Callable[..., IngressServer],
) -> None:
    """About 10,000 POSTs (9,113 distinct events of 300 organizations and 250 users in 50
    independent histories, 100 of them of a type clerk-sync skips, plus 10% re-sent under the
    same svix id), shuffled,
    from 16 concurrent clients to the ingress under gunicorn (2 processes x 4 threads), with two
    worker processes consuming meanwhile. A 503 is retried as Svix would. In the end
    ``webhook_events`` holds exactly the distinct svix ids, each applied or skipped, and the
    tables equal the histories' truth."""
    stream = clerk_stream(
        histories=50,
        organizations=6,
        events_per_history=180,
        users=5,
        ignored_per_history=2,
        kinds=FEW_DELETIONS,
        seed=5,
    )
    rng = random.Random(5)
    sent = stream.with_duplicates(0.1, rng)
    secret = settings.webhook_secrets[0]
    ingress = start_ingress(settings)
    workers = [start_worker(settings, concurrency=1) for _ in range(2)]

    local = threading.local()
    refused: Counter[int] = Counter()

    def post(delivery: Delivery) -> int:
        if not hasattr(local, "client"):
            local.client = WebhookClient(ingress.url)
        for _ in range(20):
            status, _headers = local.client.post(*signed_request(secret, delivery))
            if status != 503:
                return status
            refused[status] += 1
            time.sleep(0.5)
        return 503

    started = time.monotonic()
    with ThreadPoolExecutor(LOAD_CLIENTS) as pool:
        statuses = Counter(pool.map(post, sent))
    posted = elapsed(started)
    assert statuses == {202: len(sent)}
    wait_for(all_finished(pg_engine, len(stream.events)), 300, interval=1)
    done = elapsed(started)
    wait_for(lambda: queue_length(redis_client, settings.queue_name) == 0, 30)
    wait_for(lambda: redis_client.zcard(LEDGER_DUE_KEY) == 0, 30)

    assert_converged(pg_engine, stream)
    counts = status_counts(pg_engine)
    assert counts == {
        "applied": len(stream.events) - len(stream.skipped),
        "skipped": len(stream.skipped),
    }
    logs = [worker.log() for worker in workers]
    report(
        "load",
        posts=len(sent),
        distinct=len(stream.events),
        organizations=len({row["id"] for row in stream.organizations}),
        post_seconds=posted,
        posts_per_s=round(len(sent) / posted),
        all_finished_s=done,
        events_per_s=round(len(stream.events) / done),
        retried_503=sum(refused.values()),
        duplicates_ignored=sum(len(list(lines(log, "duplicate"))) for log in logs),
        celery_retries=sum(len(retry_countdowns(log)) for log in logs),
    )
