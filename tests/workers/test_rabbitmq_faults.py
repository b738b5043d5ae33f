"""Issue #20: the fault tests that matter, on RabbitMQ (a quorum queue, publisher confirms, no
ledger): the broker killed (``503``, then convergence, and what it confirmed survives), a
worker SIGKILLed in the middle of a backlog, and four competing workers on one shuffled,
duplicated history. The Redis versions are in ``test_faults.py``; the end state is checked the
same way (``assert_converged``: every svix id once in ``webhook_events``, finished as expected,
and the tables equal to in-order application of the history)."""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

import pytest
from sqlalchemy import Engine, select

from clerk_sync.core.settings import Settings
from models.tables import webhook_events
from tests.conftest import WorkerProcess, wait_for
from tests.faults import (
    IngressServer,
    TcpProxy,
    WebhookClient,
    clerk_stream,
    elapsed,
    finished_count,
    inbox_statuses,
    signed_request,
)
from tests.models.histories import Delivery
from tests.rabbitmq import RabbitServer, amqp_settings, queue_depth, rabbit_server
from tests.workers.conftest import enqueue_through
from tests.workers.test_faults import (
    FEW_DELETIONS,
    all_finished,
    assert_converged,
    pg_proxy,
    report,
)

__all__ = ["amqp_settings", "pg_proxy", "rabbit_server"]

pytestmark = [pytest.mark.fault, pytest.mark.worker]

StartWorker = Callable[..., WorkerProcess]


@pytest.fixture
def enqueue_amqp(amqp_settings: Settings) -> Callable[[list[Delivery]], None]:
    """Queue deliveries through the real ingress app (in process) on RabbitMQ."""
    return enqueue_through(amqp_settings)


def requeued(log: str) -> int:
    """Messages a worker put back on the queue because the database could not record their
    dead letter: batched (logged as the batch's unexpected error) or one by one (Celery's
    ``Reject``)."""
    return log.count("raised unexpected") + log.count("reject requeue=True")


def attempts(engine: Engine) -> Counter[int]:
    with engine.connect() as connection:
        return Counter(connection.execute(select(webhook_events.c.attempts)).scalars())


# -- 1. broker down -------------------------------------------------------------------------------


@pytest.mark.timeout(300)
def test_rabbitmq_killed_refuses_with_503_keeps_what_it_confirmed_and_converges(
    settings: Settings,
    pg_engine: Engine,
    rabbit_server: RabbitServer,
    start_worker: StartWorker,
    start_ingress: Callable[..., IngressServer],
) -> None:
    """Our own RabbitMQ node under a running ingress (gunicorn) and worker. (1) Events accepted
    and applied. (2) The worker stopped, more events accepted: confirmed, only in the broker.
    (3) The node SIGKILLed: every POST is ``503`` with Retry-After. (4) The node started again
    on its data: the events confirmed in (2) are still queued; Svix's retries of (3) (and
    copies of (1)) are accepted; a worker applies everything, each event once."""
    broker = rabbit_server
    settings = replace(settings, broker_url=broker.url)
    stream = clerk_stream(histories=2, organizations=3, events_per_history=20, seed=1)
    rng = random.Random(1)
    events = list(stream.events)
    rng.shuffle(events)
    third = len(events) // 3
    applied, queued, during = events[:third], events[third : 2 * third], events[2 * third :]
    secret = settings.webhook_secrets[0]

    worker = start_worker(settings, concurrency=1)
    ingress = start_ingress(settings)
    client = WebhookClient(ingress.url)
    assert [client.post(*signed_request(secret, d))[0] for d in applied] == [202] * len(applied)
    wait_for(all_finished(pg_engine, len(applied)), 60)

    worker.stop()
    assert [client.post(*signed_request(secret, d))[0] for d in queued] == [202] * len(queued)
    assert queue_depth(settings)[0] == len(queued)

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
    # Within Svix's 15 s: a connection attempt and a publish attempt, each bounded.
    assert slowest < 3 * settings.broker_publish_timeout_seconds + 1, slowest

    broker.start()
    outage_seconds = elapsed(outage)
    # A restarted node reports a quorum queue's messages once it has read its log back.
    wait_for(lambda: queue_depth(settings)[0] == len(queued), 30)  # what it confirmed survived
    redelivered = during + applied
    rng.shuffle(redelivered)
    statuses = [client.post(*signed_request(secret, d))[0] for d in redelivered]
    assert statuses == [202] * len(redelivered), Counter(statuses)

    restarted = time.monotonic()
    worker = start_worker(settings, concurrency=1)
    wait_for(all_finished(pg_engine, len(events)), 120, interval=0.5)
    wait_for(lambda: queue_depth(settings)[0] == 0, 30)
    assert_converged(pg_engine, stream)
    assert set(attempts(pg_engine)) == {1}, "each event was processed exactly once"
    assert "dead-lettered" not in worker.log()
    report(
        "rabbitmq-killed",
        events=len(events),
        confirmed_then_killed=len(queued),
        refused_503=len(during),
        slowest_503_s=round(slowest, 2),
        outage_s=outage_seconds,
        all_applied_after_restart_s=elapsed(restarted),
    )


# -- 2. database down beyond the retry budget --------------------------------------------------


@pytest.mark.parametrize("batch_size", [1, 100], ids=["one-by-one", "batched"])
@pytest.mark.timeout(180)
def test_database_outage_beyond_the_retry_budget_on_rabbitmq_loses_nothing(
    amqp_settings: Settings,
    pg_engine: Engine,
    pg_proxy: TcpProxy,
    enqueue_amqp: Callable[[list[Delivery]], None],
    start_worker: StartWorker,
    batch_size: int,
) -> None:
    """The retries run out while PostgreSQL is unreachable, so dead-lettering fails too. On
    Redis the ledger's sweeper publishes such an event again; RabbitMQ has no ledger, so the
    worker puts the message back on the queue instead of dropping it. Once the database is
    back every event is applied, none dead-lettered."""
    worker_settings = replace(
        amqp_settings,
        database_url=pg_proxy.url_for(amqp_settings.database_url),
        batch_size=batch_size,
        max_retries=1,
        retry_backoff_seconds=0.2,
        retry_backoff_max_seconds=0.4,
    )
    stream = clerk_stream(histories=1, organizations=2, events_per_history=10, seed=8)
    enqueue_amqp(stream.events)
    pg_proxy.cut()
    worker = start_worker(worker_settings, concurrency=2)
    wait_for(lambda: requeued(worker.log()) >= 2 * len(stream.events), 90, 0.2)
    assert finished_count(pg_engine) == 0
    pg_proxy.restore()
    restored = time.monotonic()
    wait_for(all_finished(pg_engine, len(stream.events)), 60, interval=0.2)
    wait_for(lambda: queue_depth(amqp_settings)[0] == 0, 30)
    assert_converged(pg_engine, stream)
    report(
        "rabbitmq-database-outage-beyond-budget",
        events=len(stream.events),
        requeued_for_want_of_a_database=requeued(worker.log()),
        applied_after_restore_s=elapsed(restored),
    )


# -- 3. worker killed -----------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_worker_killed_mid_backlog_on_rabbitmq_loses_nothing_and_applies_nothing_twice(
    amqp_settings: Settings,
    pg_engine: Engine,
    enqueue_amqp: Callable[[list[Delivery]], None],
    start_worker: StartWorker,
) -> None:
    """SIGKILL a worker's whole process group in the middle of a backlog, twice, each time
    starting another: RabbitMQ puts what the dead connection held back on the queue at once
    (no visibility timeout, no ledger, no sweeper); every event is applied, once."""
    settings = amqp_settings
    stream = clerk_stream(histories=6, organizations=4, events_per_history=50, seed=3)
    events = list(stream.events)
    random.Random(3).shuffle(events)
    enqueue_amqp(events)
    assert queue_depth(settings) == (len(events), 0)

    kills = []
    worker = start_worker(settings, concurrency=2)
    for fraction in (1 / 3, 2 / 3):
        wait_for(lambda: finished_count(pg_engine) >= len(events) * fraction, 90, 0.01)  # noqa: B023
        os.killpg(worker.process.pid, signal.SIGKILL)
        worker.process.wait(timeout=10)
        killed_at = time.monotonic()
        time.sleep(0.5)  # a COMMIT already sent when the worker died still completes
        finished = finished_count(pg_engine)
        time.sleep(0.5)
        assert finished_count(pg_engine) == finished, "nothing runs after the SIGKILL"
        # The dead worker's messages are back on the queue, not waiting for a timeout.
        ready, _consumers = wait_for(
            lambda: (depth := queue_depth(settings))[1] == 0 and depth, 30, 0.2
        )
        kills.append({"finished_at_kill": finished, "ready_after_kill": ready})
        assert ready >= len(events) - finished, "every unfinished event is queued again"
        worker = start_worker(settings, concurrency=2)
    wait_for(all_finished(pg_engine, len(events)), 90, interval=0.2)
    drained_after_kill = elapsed(killed_at)
    assert drained_after_kill < settings.visibility_timeout_seconds
    wait_for(lambda: queue_depth(settings)[0] == 0, 30)

    assert_converged(pg_engine, stream)
    statuses = inbox_statuses(pg_engine)
    assert len(statuses) == len(events)
    report(
        "rabbitmq-worker-killed",
        events=len(events),
        kills=kills,
        all_finished_after_last_kill_s=drained_after_kill,
        attempts=dict(attempts(pg_engine)),
    )


# -- 4. concurrency -------------------------------------------------------------------------------


@pytest.mark.timeout(240)
def test_four_competing_workers_on_rabbitmq_equal_in_order_application(
    amqp_settings: Settings,
    pg_engine: Engine,
    enqueue_amqp: Callable[[list[Delivery]], None],
    start_worker: StartWorker,
) -> None:
    """Four worker processes (four consumers of the quorum queue) take one shuffled stream
    with Svix-style duplicates, in which 300 events hit the same four organizations and six
    users: the tables equal the history's in-order state."""
    settings = amqp_settings
    stream = clerk_stream(
        histories=1, organizations=4, events_per_history=300, users=6, kinds=FEW_DELETIONS, seed=6
    )
    sent = stream.with_duplicates(0.1, random.Random(4))
    workers = [start_worker(settings, concurrency=1) for _ in range(4)]
    wait_for(lambda: queue_depth(settings)[1] == 4, 30)
    started = time.monotonic()
    enqueue_amqp(sent)
    wait_for(all_finished(pg_engine, len(stream.events)), 120, interval=0.2)
    wait_for(lambda: queue_depth(settings)[0] == 0, 30)
    took = elapsed(started)

    assert_converged(pg_engine, stream)
    batches_by = [worker.log().count("batch processed") for worker in workers]
    report(
        "rabbitmq-concurrency",
        events=len(stream.events),
        sent_with_duplicates=len(sent),
        seconds=took,
        batches_per_worker=batches_by,
    )
