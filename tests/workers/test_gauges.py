"""The pipeline gauges a worker serves (``workers.gauges``), read from real PostgreSQL and
Redis at scrape time: their values, their cache, and a scrape that survives a database and a
broker that cannot be read."""

from __future__ import annotations

import time
import urllib.request
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from sqlalchemy import Engine, update

from clerk_sync.broker.publisher import Publisher
from clerk_sync.core.queue import QueuedEvent
from clerk_sync.core.settings import Settings
from models.tables import webhook_events
from tests.conftest import wait_for
from tests.factories import event, membership_data, new_svix_id, organization_data
from tests.models.support import deliver
from tests.servers import Samples, answers, free_port, metric_samples
from tests.throwaway_redis import DURABLE, NOT_DURABLE, StartRedis, start_redis
from workers.gauges import PipelineGauges

__all__ = ["start_redis"]

PLAIN = frozenset[tuple[str, str]]()


def scrape(gauges: PipelineGauges) -> Samples:
    registry = CollectorRegistry()
    registry.register(gauges)
    return metric_samples(generate_latest(registry).decode())


def errors(source: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return ("clerk_sync_metrics_scrape_errors_total", frozenset({("source", source)}))


def durable(state: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return ("clerk_sync_broker_durable", frozenset({("state", state)}))


def dead_letter(pg_engine: Engine) -> None:
    poison = membership_data(organization_data("org_gauges"))
    del poison["public_user_data"]["user_id"]
    deliver(pg_engine, event("organizationMembership.created", poison))


def test_gauges_read_the_database_and_the_broker(
    settings: Settings, pg_engine: Engine, start_redis: StartRedis
) -> None:
    settings = replace(settings, broker_url=start_redis(*DURABLE))
    dead_letter(pg_engine)
    dead_letter(pg_engine)
    unfinished = new_svix_id()
    deliver(pg_engine, event("organization.created", organization_data()), svix_id=unfinished)
    with pg_engine.begin() as connection:
        connection.execute(
            update(webhook_events)
            .where(webhook_events.c.svix_id == unfinished)
            .values(status="received", received_at=datetime.now(UTC) - timedelta(minutes=20))
        )
    publisher = Publisher(settings)
    for _ in range(3):
        publisher.publish(QueuedEvent(new_svix_id(), "{}", int(time.time() * 1000)))

    samples = scrape(PipelineGauges(settings))

    assert samples[("clerk_sync_dead_letters", PLAIN)] == 2
    assert samples[("clerk_sync_unfinished_events", PLAIN)] == 1
    assert 1195 < samples[("clerk_sync_oldest_unfinished_event_age_seconds", PLAIN)] < 1260
    assert samples[("clerk_sync_queue_depth", PLAIN)] == 3
    assert samples[("clerk_sync_ledger_size", PLAIN)] == 3
    assert samples[durable("durable")] == 1
    assert samples[errors("database")] == 0
    assert samples[errors("broker")] == 0


def test_an_idle_pipeline_and_a_broker_that_is_not_durable(
    settings: Settings, pg_engine: Engine, start_redis: StartRedis
) -> None:
    samples = scrape(PipelineGauges(replace(settings, broker_url=start_redis(*NOT_DURABLE))))
    assert samples[("clerk_sync_dead_letters", PLAIN)] == 0
    assert samples[("clerk_sync_oldest_unfinished_event_age_seconds", PLAIN)] == 0
    assert samples[("clerk_sync_queue_depth", PLAIN)] == 0
    assert samples[durable("not_durable")] == 0
    assert durable("durable") not in samples


def test_values_are_cached_between_scrapes(settings: Settings, pg_engine: Engine) -> None:
    cached = PipelineGauges(settings, cache_seconds=3600)
    fresh = PipelineGauges(settings, cache_seconds=0)
    assert scrape(cached)[("clerk_sync_dead_letters", PLAIN)] == 0
    dead_letter(pg_engine)
    assert scrape(cached)[("clerk_sync_dead_letters", PLAIN)] == 0
    assert scrape(fresh)[("clerk_sync_dead_letters", PLAIN)] == 1


def test_unreadable_sources_leave_their_gauges_out_and_are_counted(settings: Settings) -> None:
    broken = replace(
        settings,
        database_url="postgresql+psycopg://postgres@127.0.0.1:1/nowhere",
        broker_url="redis://127.0.0.1:1/0",
        broker_publish_timeout_seconds=0.5,
    )
    gauges = PipelineGauges(broken, cache_seconds=0)
    for attempt in (1, 2):
        samples = scrape(gauges)
        assert samples[errors("database")] == attempt
        assert samples[errors("broker")] == attempt
        assert samples[durable("unknown")] == 0
        names = {name for name, _ in samples}
        assert names == {"clerk_sync_metrics_scrape_errors_total", "clerk_sync_broker_durable"}


@pytest.mark.worker
def test_a_worker_serves_the_gauges_beside_its_counters(
    settings: Settings, pg_engine: Engine, start_worker: Any
) -> None:
    dead_letter(pg_engine)
    port = free_port()
    start_worker(replace(settings, worker_metrics_port=port))
    wait_for(lambda: answers(f"http://127.0.0.1:{port}/metrics"))
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        samples = metric_samples(response.read().decode())
    assert samples[("clerk_sync_dead_letters", PLAIN)] == 1
    assert samples[("clerk_sync_queue_depth", PLAIN)] == 0
    assert ("clerk_sync_worker_lag_seconds_count", PLAIN) in samples
