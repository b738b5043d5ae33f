"""Operators drive clerk-sync's workers with Celery's own tools (``inspect``, ``control``,
revoke, worker events, mingle and gossip, SIGTERM, retries with a countdown), but the worker
runs a custom Redis transport, a batching task strategy and its own prefork pool: these tests
run real ``clerk-sync worker`` processes and fail wherever they behave otherwise than a stock
Celery worker."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from itertools import pairwise
from typing import Any

import pytest
import redis
from celery import Celery
from sqlalchemy import Engine, func, select

from clerk_sync.broker.publisher import Publisher
from clerk_sync.core.queue import APPLY_EVENT_TASK, LEDGER_DUE_KEY, QueuedEvent
from clerk_sync.core.settings import Settings
from models.tables import organizations, webhook_events
from tests.conftest import Send, WorkerProcess, inbox_row, queue_length, wait_for
from tests.factories import body_of, event, new_svix_id, organization_data
from workers.app import create_celery_app

pytestmark = pytest.mark.worker

REPLY_TIMEOUT = 5.0
"""How long a control or inspect call waits for replies (it returns early once all arrived)."""
NODE_DOMAIN = "clerk-sync-test"
RETRY_LINE = re.compile(
    re.escape(APPLY_EVENT_TASK)
    + r"\[(?P<task_id>[0-9a-f-]+)\] retry: Retry in (?P<seconds>[0-9.]+)s"
)


# -- helpers ------------------------------------------------------------------------------------


@pytest.fixture
def celery_app(settings: Settings) -> Iterator[Celery]:
    """The project's Celery app in the test process, to control and inspect the workers."""
    app = create_celery_app(settings)
    yield app
    app.close()


def node_name(role: str) -> str:
    """A fully qualified, unique Celery node name (no ``%h`` to expand)."""
    return f"{role}-{uuid.uuid4().hex[:6]}@{NODE_DOMAIN}"


def inspect(app: Celery, *workers: WorkerProcess) -> Any:
    """An ``Inspect`` addressed to these workers only, returning as soon as each has replied."""
    names = [worker.hostname for worker in workers]
    return app.control.inspect(destination=names, timeout=REPLY_TIMEOUT, limit=len(names))


def org_event() -> dict[str, Any]:
    return event("organization.created", organization_data())


def queued(payload: dict[str, Any]) -> QueuedEvent:
    return QueuedEvent(new_svix_id(), body_of(payload), int(time.time() * 1000))


def status_of(engine: Engine, svix_id: str) -> str | None:
    row = inbox_row(engine, svix_id)
    return None if row is None else str(row["status"])


def applied_count(engine: Engine, svix_ids: Iterable[str]) -> int:
    wanted = list(svix_ids)
    with engine.connect() as connection:
        return int(
            connection.scalar(
                select(func.count())
                .select_from(webhook_events)
                .where(webhook_events.c.svix_id.in_(wanted), webhook_events.c.status == "applied")
            )
            or 0
        )


def applied_total(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(
            connection.scalar(
                select(func.count())
                .select_from(webhook_events)
                .where(webhook_events.c.status == "applied")
            )
            or 0
        )


def wait_applied(engine: Engine, svix_ids: Iterable[str], timeout: float = 30.0) -> None:
    wanted = list(svix_ids)
    wait_for(lambda: applied_count(engine, wanted) == len(wanted), timeout, interval=0.1)


def drained(client: redis.Redis[bytes], settings: Settings) -> bool:
    """Nothing queued and nothing delivered but unacknowledged."""
    return queue_length(client, settings.queue_name) == 0 and client.hlen("unacked") == 0


def tasks_total(stats: dict[str, Any], hostname: str) -> int:
    """``clerk_sync.apply_event`` tasks a worker reports in ``inspect stats`` (``total``)."""
    return int(stats.get(hostname, {}).get("total", {}).get(APPLY_EVENT_TASK, 0))


def applied_in_batch_lines(*workers: WorkerProcess) -> Counter[str]:
    """How many times each svix id is named ``applied`` in the workers' "batch processed" lines."""
    applied: Counter[str] = Counter()
    for worker in workers:
        for line in worker.log().splitlines():
            if '"batch processed"' in line:
                applied.update(json.loads(line)["svix_ids"].get("applied", []))
    return applied


def kill_worker(worker: WorkerProcess) -> None:
    """SIGKILL a worker and its pool processes (its own process group): no goodbye event."""
    os.killpg(worker.process.pid, signal.SIGKILL)
    worker.process.wait(timeout=10)


class EventCapture:
    """Celery's event stream (``app.events.Receiver``), captured in a thread, as Flower and
    ``celery events`` receive it."""

    def __init__(self, app: Celery, client: redis.Redis[bytes]) -> None:
        self.events: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        self._app = app
        self._receiver: Any = None
        patterns = client.pubsub_numpat()
        self._thread = threading.Thread(target=self._run, name="event-capture", daemon=True)
        self._thread.start()
        # Events travel by Redis pub/sub: only once subscribed does the receiver see them.
        wait_for(lambda: client.pubsub_numpat() > patterns or self.error is not None, 10)
        assert self.error is None, self.error

    def _run(self) -> None:
        try:
            with self._app.connection() as connection:
                self._receiver = self._app.events.Receiver(
                    connection, handlers={"*": self.events.append}
                )
                self._receiver.capture(limit=None, timeout=None, wakeup=False)
        except BaseException as error:  # noqa: BLE001 - reported to the test by ``of``
            self.error = error

    def of(self, event_type: str, hostname: str) -> list[dict[str, Any]]:
        assert self.error is None, self.error
        return [
            e
            for e in list(self.events)
            if e.get("type") == event_type and e.get("hostname") == hostname
        ]

    def stop(self) -> None:
        if self._receiver is not None:
            self._receiver.should_stop = True
        self._thread.join(timeout=5)


@pytest.fixture
def event_capture(celery_app: Celery, redis_client: redis.Redis[bytes]) -> Iterator[EventCapture]:
    capture = EventCapture(celery_app, redis_client)
    yield capture
    capture.stop()


# -- 1. inspect and control ---------------------------------------------------------------------


def test_inspect_and_control_commands_answer_from_two_workers(
    settings: Settings,
    pg_engine: Engine,
    redis_client: redis.Redis[bytes],
    send: Send,
    start_worker: Any,
    celery_app: Celery,
) -> None:
    """``inspect ping/stats/active_queues/registered`` answer from both workers (mingle and
    gossip on); ``rate_limit``, ``cancel_consumer`` and ``add_consumer`` take effect on the one
    worker they name."""
    alpha = start_worker(settings, options=(), hostname=node_name("alpha"))
    beta = start_worker(settings, options=(), hostname=node_name("beta"))
    workers = {alpha.hostname: alpha, beta.hostname: beta}
    both = inspect(celery_app, alpha, beta)
    queue = settings.queue_name

    assert both.ping() == {name: {"ok": "pong"} for name in workers}
    stats = both.stats() or {}
    assert set(stats) == set(workers)
    for name, worker in workers.items():
        assert stats[name]["pid"] == worker.process.pid
        assert stats[name]["pool"]["max-concurrency"] == 2
        assert len(stats[name]["pool"]["processes"]) == 2
    active_queues = both.active_queues() or {}
    assert {name: [q["name"] for q in queues] for name, queues in active_queues.items()} == {
        name: [queue] for name in workers
    }
    registered = both.registered() or {}
    assert set(registered) == set(workers)
    assert all(APPLY_EVENT_TASK in tasks for tasks in registered.values())

    # The tasks a worker ran count in its stats, as Celery counts them.
    ids = [send(org_event()) for _ in range(3)]
    wait_applied(pg_engine, ids)
    wait_for(lambda: sum(tasks_total(both.stats() or {}, name) for name in workers) == 3, 10, 0.5)

    # rate_limit: on alpha only.
    control = celery_app.control
    assert control.rate_limit(
        APPLY_EVENT_TASK, "600/m", destination=[alpha.hostname], reply=True, timeout=REPLY_TIMEOUT
    ) == [{alpha.hostname: {"ok": "new rate limit set successfully"}}]
    limits = both.registered("rate_limit") or {}
    assert f"{APPLY_EVENT_TASK} [rate_limit=600/m]" in limits[alpha.hostname]
    assert APPLY_EVENT_TASK in limits[beta.hostname]

    # cancel_consumer on both: an event sent now stays in the queue's Redis list.
    for name in workers:
        assert control.cancel_consumer(
            queue, destination=[name], reply=True, timeout=REPLY_TIMEOUT
        ) == [{name: {"ok": f"no longer consuming from {queue}"}}]
    assert both.active_queues() == {name: [] for name in workers}
    # A BRPOP issued before the cancel may still be waiting (1 s at most): an event it takes is
    # another test's matter (``..._as_its_consumer_is_cancelled_goes_back_on_the_queue``).
    time.sleep(1.5)
    totals = both.stats() or {}
    held = send(org_event())
    time.sleep(3)  # several of kombu's 1 s BRPOPs: a worker still consuming would take it
    assert queue_length(redis_client, queue) == 1
    assert inbox_row(pg_engine, held) is None

    # add_consumer on alpha: it takes the event and applies it; beta still consumes nothing.
    assert control.add_consumer(
        queue, destination=[alpha.hostname], reply=True, timeout=REPLY_TIMEOUT
    ) == [{alpha.hostname: {"ok": f"add consumer {queue}"}}]
    wait_applied(pg_engine, [held], 15)
    active_queues = both.active_queues() or {}
    assert [q["name"] for q in active_queues[alpha.hostname]] == [queue]
    assert active_queues[beta.hostname] == []
    wait_for(
        lambda: (
            tasks_total(both.stats() or {}, alpha.hostname)
            == tasks_total(totals, alpha.hostname) + 1
        ),
        10,
        0.5,
    )
    assert tasks_total(both.stats() or {}, beta.hostname) == tasks_total(totals, beta.hostname)
    wait_for(lambda: drained(redis_client, settings), 10)


def test_an_event_arriving_as_its_consumer_is_cancelled_goes_back_on_the_queue(
    settings: Settings,
    pg_engine: Engine,
    redis_client: redis.Redis[bytes],
    send: Send,
    start_worker: Any,
    celery_app: Celery,
) -> None:
    """An idle worker always has a BRPOP waiting (kombu's, 1 s); ``cancel_consumer`` does not
    withdraw it, so an event sent just after the cancel is delivered to a queue with no
    consumer. kombu then puts it back on the queue ("Requeuing undeliverable message ... No
    consumers."), where it waits for a consumer: it must not vanish."""
    worker = start_worker(settings, hostname=node_name("cancelled"))
    queue = settings.queue_name
    # Asked again until it answers: a worker just started on a busy machine may not be reading
    # its control queue yet (cancelling twice is the same as once).
    wait_for(
        lambda: (
            celery_app.control.cancel_consumer(
                queue, destination=[worker.hostname], reply=True, timeout=REPLY_TIMEOUT
            )
            == [{worker.hostname: {"ok": f"no longer consuming from {queue}"}}]
        ),
        30,
    )
    held = send(org_event())
    wait_for(lambda: "Requeuing undeliverable message" in worker.log(), 5)
    time.sleep(1.5)
    assert queue_length(redis_client, queue) == 1, "the undeliverable event left the queue"
    assert inbox_row(pg_engine, held) is None

    assert celery_app.control.add_consumer(
        queue, destination=[worker.hostname], reply=True, timeout=REPLY_TIMEOUT
    ) == [{worker.hostname: {"ok": f"add consumer {queue}"}}]
    wait_applied(pg_engine, [held], 15)
    wait_for(lambda: drained(redis_client, settings), 10)


def test_a_rate_limit_set_by_remote_control_throttles_the_task(
    settings: Settings, pg_engine: Engine, send: Send, start_worker: Any, celery_app: Celery
) -> None:
    """``celery control rate_limit clerk_sync.apply_event 12/m``: a stock worker then starts
    one such task every 5 s (Celery's token bucket, one token at a time), whatever the backlog."""
    worker = start_worker(settings, hostname=node_name("limited"))
    assert celery_app.control.rate_limit(
        APPLY_EVENT_TASK, "12/m", destination=[worker.hostname], reply=True, timeout=REPLY_TIMEOUT
    ) == [{worker.hostname: {"ok": "new rate limit set successfully"}}]
    started = time.monotonic()
    ids = [send(org_event()) for _ in range(3)]
    wait_for(lambda: applied_count(pg_engine, ids) >= 1, 10, 0.1)
    time.sleep(max(0.0, started + 3.5 - time.monotonic()))
    assert applied_count(pg_engine, ids) == 1, "12/m lets one task start in the first 5 s"
    wait_applied(pg_engine, ids, 20)
    assert time.monotonic() - started > 8, "the third task waits for the bucket's third token"


# -- 2. revoke ----------------------------------------------------------------------------------


def test_a_revoked_task_is_discarded_and_the_others_applied(
    settings: Settings,
    pg_engine: Engine,
    redis_client: redis.Redis[bytes],
    start_worker: Any,
    celery_app: Celery,
) -> None:
    """``celery control revoke <id>`` before the task arrives: the worker discards it (and
    acknowledges its message) and applies the tasks after it."""
    worker = start_worker(settings, hostname=node_name("revoker"))
    revoked_task = str(uuid.uuid4())
    replies = celery_app.control.revoke(
        revoked_task, destination=[worker.hostname], reply=True, timeout=REPLY_TIMEOUT
    )
    assert "flagged as revoked" in replies[0][worker.hostname]["ok"]
    assert revoked_task in (inspect(celery_app, worker).revoked() or {})[worker.hostname]

    publisher = Publisher(settings)
    revoked_event, kept_event = queued(org_event()), queued(org_event())
    publisher.send(revoked_event, task_id=revoked_task)
    publisher.send(kept_event, task_id=str(uuid.uuid4()))
    wait_applied(pg_engine, [kept_event.svix_id])
    wait_for(lambda: drained(redis_client, settings), 10)
    assert inbox_row(pg_engine, revoked_event.svix_id) is None
    assert f"Discarding revoked task: {APPLY_EVENT_TASK}[{revoked_task}]" in worker.log()


def test_a_task_revoked_while_it_waits_for_its_countdown_is_not_applied(
    settings: Settings,
    pg_engine: Engine,
    redis_client: redis.Redis[bytes],
    start_worker: Any,
    celery_app: Celery,
) -> None:
    """A task held for its countdown (a retry) shows in ``inspect scheduled``; revoked there, a
    stock worker discards it when it falls due (``Request.execute_using_pool`` checks)."""
    worker = start_worker(settings, hostname=node_name("revoker"))
    publisher = Publisher(settings)
    task_id = str(uuid.uuid4())
    waiting = queued(org_event())
    publisher.send(waiting, task_id=task_id, countdown=4)
    due = time.monotonic() + 4
    one = inspect(celery_app, worker)
    scheduled = wait_for(lambda: (one.scheduled() or {}).get(worker.hostname), 5, 0.2)
    assert [entry["request"]["id"] for entry in scheduled] == [task_id]
    replies = celery_app.control.revoke(
        task_id, destination=[worker.hostname], reply=True, timeout=REPLY_TIMEOUT
    )
    assert "flagged as revoked" in replies[0][worker.hostname]["ok"]

    time.sleep(max(0.0, due + 1 - time.monotonic()))
    later = queued(org_event())
    publisher.send(later)
    wait_applied(pg_engine, [later.svix_id])
    wait_for(lambda: drained(redis_client, settings), 10)
    assert inbox_row(pg_engine, waiting.svix_id) is None, "the revoked task was applied"


# -- 3. heartbeats and worker events ------------------------------------------------------------


def test_workers_send_online_heartbeat_and_offline_events(
    settings: Settings,
    pg_engine: Engine,
    send: Send,
    start_worker: Any,
    event_capture: EventCapture,
) -> None:
    """``worker-online``, a ``worker-heartbeat`` every 2 s (Celery's default) counting the tasks
    processed, and ``worker-offline`` at shutdown: what Flower and gossip go by."""
    worker = start_worker(settings, hostname=node_name("beating"))
    name = worker.hostname
    wait_for(lambda: event_capture.of("worker-online", name), 5)
    svix_id = send(org_event())
    wait_applied(pg_engine, [svix_id])
    beats = wait_for(
        lambda: (
            (found := event_capture.of("worker-heartbeat", name))
            and len(found) >= 3
            and found[-1]["processed"] >= 1
            and found
        ),
        8,
        0.1,
    )
    assert all(beat["freq"] == 2.0 for beat in beats)
    assert all(beat["sw_ident"] == "py-celery" for beat in beats)
    gaps = [later["timestamp"] - earlier["timestamp"] for earlier, later in pairwise(beats)]
    assert all(1.0 < gap < 3.5 for gap in gaps), gaps

    worker.stop()
    assert worker.process.returncode == 0
    wait_for(lambda: event_capture.of("worker-offline", name), 5)


# -- 4. mingle and gossip -----------------------------------------------------------------------


def test_mingle_syncs_a_new_worker_and_gossip_notices_a_lost_one(
    settings: Settings, start_worker: Any, celery_app: Celery
) -> None:
    """Mingle: a worker starting next to another syncs with it at start-up and takes over its
    revoked task ids. Gossip: the first worker follows the second's heartbeats, and reports it
    lost ("missed heartbeat from ...") once they stop."""
    alpha = start_worker(settings, options=(), hostname=node_name("alpha"))
    assert "mingle: all alone" in alpha.log()
    revoked_task = str(uuid.uuid4())
    celery_app.control.revoke(
        revoked_task, destination=[alpha.hostname], reply=True, timeout=REPLY_TIMEOUT
    )

    beta = start_worker(settings, options=(), hostname=node_name("beta"))
    log = beta.log()
    assert "mingle: sync with 1 nodes" in log
    assert "mingle: sync complete" in log
    assert revoked_task in (inspect(celery_app, beta).revoked() or {})[beta.hostname]

    time.sleep(3)  # beta's heartbeats (every 2 s) reach alpha's gossip
    assert "missed heartbeat" not in alpha.log()
    kill_worker(beta)
    # Gossip checks every 5 s for workers silent for twice their heartbeat interval.
    wait_for(lambda: f"missed heartbeat from {beta.hostname}" in alpha.log(), 15, 0.2)


# -- 5. warm shutdown ---------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_sigterm_during_a_backlog_is_a_warm_shutdown_that_loses_nothing(
    settings: Settings,
    pg_engine: Engine,
    redis_client: redis.Redis[bytes],
    start_worker: Any,
) -> None:
    """SIGTERM while the worker drains a backlog: it finishes what it runs, exits 0 within a few
    batches' time and leaves nothing unacknowledged; a second worker applies the rest, every
    event exactly once."""
    publisher = Publisher(settings)
    events = [queued(org_event()) for _ in range(2000)]
    for queued_event in events:
        publisher.publish(queued_event)
    ids = [queued_event.svix_id for queued_event in events]

    first = start_worker(settings, concurrency=2, hostname=node_name("first"))
    wait_for(lambda: applied_total(pg_engine) >= 100 and redis_client.hlen("unacked"), 30, 0.01)
    signalled = time.monotonic()
    first.process.send_signal(signal.SIGTERM)
    assert first.process.wait(timeout=30) == 0
    stopped_within = time.monotonic() - signalled
    assert stopped_within < 30
    assert "Warm shutdown" in first.log()
    applied_at_stop = applied_total(pg_engine)
    assert applied_at_stop < len(ids), "the backlog outlasted the worker (else nothing to test)"
    assert redis_client.hlen("unacked") == 0, "what the worker held went back on the queue"
    assert redis_client.zcard("unacked_index") == 0
    assert queue_length(redis_client, settings.queue_name) >= len(ids) - applied_at_stop

    second = start_worker(settings, concurrency=2, hostname=node_name("second"))
    wait_applied(pg_engine, ids, 60)
    wait_for(lambda: drained(redis_client, settings), 15)
    wait_for(lambda: redis_client.zcard(LEDGER_DUE_KEY) == 0, 15)
    with pg_engine.connect() as connection:
        rows = connection.scalar(select(func.count()).select_from(webhook_events))
        orgs = connection.scalar(select(func.count()).select_from(organizations))
    assert (rows, orgs) == (len(ids), len(ids))
    applied = applied_in_batch_lines(first, second)
    assert set(applied) == set(ids)
    assert max(applied.values()) == 1, "an event applied twice"


# -- 6. retries with a countdown ----------------------------------------------------------------


def test_a_retry_waits_for_its_countdown(
    settings: Settings,
    pg_engine: Engine,
    send: Send,
    start_worker: Any,
    celery_app: Celery,
    hold_organization_lock: Any,
) -> None:
    """A transient failure (the organization's lock held elsewhere) is retried with Celery's
    "retry: Retry in Ns" and a countdown: the task shows in ``inspect scheduled`` with its ETA
    and is applied once the countdown has passed, not before. (``test_retries`` covers retrying
    until applied and dead-lettering.)"""
    settings = replace(settings, retry_backoff_seconds=4.0, retry_backoff_max_seconds=4.0)
    release = hold_organization_lock("org_countdown")
    svix_id = send(event("organization.created", organization_data("org_countdown")))
    worker = start_worker(settings, hostname=node_name("retrying"))

    retry = wait_for(lambda: RETRY_LINE.search(worker.log()), 20)
    seen = time.monotonic()
    release()
    countdown = float(retry["seconds"])
    assert 2.0 <= countdown <= 4.0  # full jitter over [backoff / 2, backoff]
    scheduled = (inspect(celery_app, worker).scheduled() or {}).get(worker.hostname, [])
    (entry,) = [e for e in scheduled if e["request"]["id"] == retry["task_id"]]
    eta = datetime.fromisoformat(entry["eta"])
    assert abs(eta.timestamp() - (time.time() + countdown - (time.monotonic() - seen))) < 1.5

    wait_for(lambda: status_of(pg_engine, svix_id) == "applied", countdown + 10, 0.05)
    waited = time.monotonic() - seen
    assert waited > countdown - 0.5, f"applied {waited:.2f}s after the retry, countdown {countdown}"
    row = inbox_row(pg_engine, svix_id)
    assert row is not None
    assert row["attempts"] > 1
    assert row["last_error"] is None
    assert datetime.now(UTC) >= eta


# -- 7. remote shutdown -------------------------------------------------------------------------


def test_remote_shutdown_stops_one_worker_and_the_other_carries_on(
    settings: Settings,
    pg_engine: Engine,
    redis_client: redis.Redis[bytes],
    send: Send,
    start_worker: Any,
    celery_app: Celery,
) -> None:
    """``celery control shutdown -d <node>``: that worker exits 0, the other keeps applying."""
    leaving = start_worker(settings, hostname=node_name("leaving"))
    staying = start_worker(settings, hostname=node_name("staying"))
    celery_app.control.broadcast("shutdown", destination=[leaving.hostname])
    assert leaving.process.wait(timeout=20) == 0
    assert "Got shutdown from remote" in leaving.log()

    ids = [send(org_event()) for _ in range(5)]
    wait_applied(pg_engine, ids)
    assert staying.process.poll() is None
    replies = celery_app.control.ping(
        destination=[leaving.hostname, staying.hostname], timeout=REPLY_TIMEOUT
    )
    assert replies == [{staying.hostname: {"ok": "pong"}}]
    wait_for(lambda: tasks_total(inspect(celery_app, staying).stats() or {}, staying.hostname) == 5)
    wait_for(lambda: drained(redis_client, settings), 10)
