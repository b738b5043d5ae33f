"""Issue #20: Redis with Sentinel as the broker (``sentinel://`` URLs), for the ingress's
one-round-trip accept, the workers and the ledger sweeper, and the master failed over under a
steady stream of events, with and without the replica wait (``WAIT 1``) before a ``202``.

Real ``redis-server`` replicas and ``redis-sentinel`` processes on loopback
(``tests.sentinel_redis``), a real worker process, the real ingress app in process."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from clerk_sync.core.queue import LEDGER_DUE_KEY
from clerk_sync.core.settings import Settings
from ingress import create_app
from models.tables import organizations, webhook_events
from tests.conftest import WorkerProcess, wait_for
from tests.factories import body_of, event, new_id, new_svix_id, organization_data, signed_headers
from tests.faults import finished_count, inbox_statuses
from tests.sentinel_redis import MASTER_NAME, SentinelGroup
from tests.sentinel_redis import sentinel_group as sentinel_group  # the fixture
from workers.app import create_celery_app, sweep

pytestmark = [pytest.mark.fault, pytest.mark.worker]

UNACKED_KEY = "unacked"
"""kombu's hash of delivered, unacknowledged messages."""


def report(name: str, **numbers: Any) -> None:
    print(f"\n[{name}] " + " ".join(f"{key}={value}" for key, value in numbers.items()))


def sentinel_settings(settings: Settings, group: SentinelGroup, **changes: Any) -> Settings:
    return replace(settings, broker_url=group.url, sentinel_master=MASTER_NAME, **changes)


class Poster:
    """Posts signed ``organization.created`` events, one new organization each, to the ingress
    app (in process) one after another, and remembers what each got."""

    def __init__(self, settings: Settings) -> None:
        self._client = create_app(settings).test_client()
        self._secret = settings.webhook_secrets[0]
        self.answers: dict[str, int] = {}
        self.organization_of: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def post_one(self) -> int:
        svix_id, organization_id = new_svix_id(), new_id("org")
        body = body_of(event("organization.created", organization_data(organization_id)))
        headers = signed_headers(self._secret, body, svix_id=svix_id)
        status = self._client.post("/webhook/clerk", data=body, headers=headers).status_code
        self.answers[svix_id] = status
        self.organization_of[svix_id] = organization_id
        return status

    def start(self, interval: float = 0.005) -> None:
        def run() -> None:
            while not self._stop.is_set():
                self.post_one()
                time.sleep(interval)

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def with_status(self, status: int) -> set[str]:
        return {svix_id for svix_id, answer in dict(self.answers).items() if answer == status}


def applied_organizations(engine: Engine) -> Counter[str]:
    with engine.connect() as connection:
        return Counter(connection.execute(select(organizations.c.id)).scalars())


@pytest.mark.timeout(240)
def test_sentinel_broker_url_serves_the_accept_the_worker_and_the_sweeper(
    settings: Settings,
    pg_engine: Engine,
    sentinel_group: SentinelGroup,
    start_worker: Any,
) -> None:
    """With ``CELERY_BROKER_URL=sentinel://…;sentinel://…`` the ingress accepts through the
    master (ledger and queue in one script), the worker consumes through kombu's sentinel
    transport with our fetch, and the sweeper re-publishes what the queue lost."""
    settings = sentinel_settings(settings, sentinel_group)
    poster = Poster(settings)
    assert [poster.post_one() for _ in range(40)] == [202] * 40
    master = sentinel_group.client(sentinel_group.master_port())
    assert master.llen(settings.queue_name) == 40
    assert master.zcard(LEDGER_DUE_KEY) == 40
    # The queue loses its messages (as kombu's window can): only the ledger has them now.
    lost = master.lrange(settings.queue_name, 0, 9)
    master.ltrim(settings.queue_name, 10, -1)
    runtime = create_celery_app(settings).clerk_sync_runtime
    assert sweep(runtime, now=time.time() + settings.ledger_redeliver_after_seconds + 1) == 40
    assert master.llen(settings.queue_name) == 70, "the sweeper published every entry again"

    worker = start_worker(settings, concurrency=2)
    wait_for(lambda: finished_count(pg_engine) == 40, 60, 0.2)
    wait_for(lambda: master.zcard(LEDGER_DUE_KEY) == 0 and master.llen(settings.queue_name) == 0)
    assert set(inbox_statuses(pg_engine).values()) == {"applied"}
    assert set(applied_organizations(pg_engine)) == set(poster.organization_of.values())
    assert len(lost) == 10
    assert "transport:SentinelTransport://" in worker.log(), "kombu's sentinel transport, ours"
    master.close()


def fail_over_under_a_stream(
    settings: Settings,
    pg_engine: Engine,
    group: SentinelGroup,
    start_worker: Any,
) -> dict[str, Any]:
    """Stream events through the ingress, SIGKILL the master in the middle, keep streaming
    until the new master has accepted as many again; then let the worker, kombu's restore and
    the sweeper (as beat would run it, later) finish. Returns what happened."""
    worker: WorkerProcess = start_worker(settings, concurrency=2)
    poster = Poster(settings)
    poster.start()
    try:
        wait_for(lambda: len(poster.with_status(202)) >= 300, 60, 0.05)
        old_master = group.master_port()
        accepted_before = len(poster.with_status(202))
        group.kill(old_master)
        killed_at = time.monotonic()
        wait_for(lambda: group.master_port() != old_master, 60, 0.1)
        failed_over_s = round(time.monotonic() - killed_at, 2)
        wait_for(lambda: len(poster.with_status(202)) >= 2 * accepted_before + 300, 120, 0.1)
    finally:
        poster.stop()
    new_master = group.client(group.master_port())
    accepted = poster.with_status(202)
    refused = poster.with_status(503)
    assert set(poster.answers.values()) <= {202, 503}, Counter(poster.answers.values())

    def drained() -> bool:
        return (
            new_master.llen(settings.queue_name) == 0
            and new_master.hlen(UNACKED_KEY) == 0
            and time.monotonic() - killed_at > settings.visibility_timeout_seconds
        )

    # kombu restores the messages the old master recorded as unacknowledged (if they were
    # replicated) after the visibility timeout; then the sweeper, as beat would, publishes
    # whatever the ledger still holds.
    wait_for(drained, 120, 0.2)
    runtime = create_celery_app(settings).clerk_sync_runtime
    republished = sweep(runtime, now=time.time() + settings.ledger_redeliver_after_seconds + 1)
    wait_for(lambda: new_master.zcard(LEDGER_DUE_KEY) == 0 and drained(), 120, 0.2)
    statuses = inbox_statuses(pg_engine)
    with pg_engine.connect() as connection:
        attempts = {
            int(tries): int(count)
            for tries, count in connection.execute(
                select(webhook_events.c.attempts, func.count()).group_by(webhook_events.c.attempts)
            )
        }
    assert worker.process.poll() is None, "the worker rode out the failover"
    new_master.close()
    return {
        "poster": poster,
        "accepted": accepted,
        "refused": refused,
        "statuses": statuses,
        "attempts": attempts,
        "republished": republished,
        "failed_over_s": failed_over_s,
    }


@pytest.mark.timeout(420)
def test_failover_with_the_replica_wait_applies_every_acknowledged_event_exactly_once(
    settings: Settings,
    pg_engine: Engine,
    sentinel_group: SentinelGroup,
    start_worker: Any,
) -> None:
    """``CLERK_SYNC_ACCEPT_REPLICA_WAIT_MS`` on: a ``202`` means a replica holds the event, so
    the master's death loses none of them; each is applied once (one inbox row, ``applied``,
    one attempt, its organization created). Events answered ``503`` may be applied too."""
    settings = sentinel_settings(
        settings, sentinel_group, accept_replica_wait_ms=1000, visibility_timeout_seconds=10
    )
    outcome = fail_over_under_a_stream(settings, pg_engine, sentinel_group, start_worker)
    accepted, statuses = outcome["accepted"], outcome["statuses"]
    lost = accepted - set(statuses)
    assert lost == set(), f"{len(lost)} acknowledged events lost"
    assert {statuses[svix_id] for svix_id in accepted} == {"applied"}
    assert set(statuses) <= set(outcome["poster"].answers), "nothing applied that was not sent"
    assert outcome["attempts"] == {1: len(statuses)}, "each event processed exactly once"
    organizations_applied = applied_organizations(pg_engine)
    assert max(organizations_applied.values()) == 1
    assert {outcome["poster"].organization_of[i] for i in accepted} <= set(organizations_applied)
    report(
        "sentinel-failover-wait",
        accepted=len(accepted),
        refused_503=len(outcome["refused"]),
        refused_but_applied=len(outcome["refused"] & set(statuses)),
        lost=len(lost),
        republished_by_sweeper=outcome["republished"],
        failover_s=outcome["failed_over_s"],
        attempts=outcome["attempts"],
    )


@pytest.mark.timeout(420)
def test_failover_without_the_replica_wait_reports_what_it_lost(
    settings: Settings,
    pg_engine: Engine,
    sentinel_group: SentinelGroup,
    start_worker: Any,
) -> None:
    """Replica wait off (the default): Redis replicates after answering, so a ``202`` the
    master had not yet passed on dies with it. How many: measured and printed, not asserted
    (on loopback, usually none or a few). What holds anyway: nothing is applied twice, and
    nothing applied was not sent."""
    settings = sentinel_settings(settings, sentinel_group, visibility_timeout_seconds=10)
    outcome = fail_over_under_a_stream(settings, pg_engine, sentinel_group, start_worker)
    accepted, statuses = outcome["accepted"], outcome["statuses"]
    assert set(statuses) <= set(outcome["poster"].answers)
    assert set(statuses.values()) <= {"applied"}
    assert max(applied_organizations(pg_engine).values()) == 1
    lost = accepted - set(statuses)
    report(
        "sentinel-failover-no-wait",
        accepted=len(accepted),
        refused_503=len(outcome["refused"]),
        lost=len(lost),
        republished_by_sweeper=outcome["republished"],
        failover_s=outcome["failed_over_s"],
        attempts=outcome["attempts"],
    )
