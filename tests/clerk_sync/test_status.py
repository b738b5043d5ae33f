"""``clerk-sync status``: queue depth, ledger, dead letters, oldest unfinished event and the last
applied event, from real Redis and PostgreSQL."""

from __future__ import annotations

import json
import time
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import redis
from click.testing import CliRunner, Result
from sqlalchemy import Engine

from clerk_sync.broker.publisher import Publisher
from clerk_sync.cli import main
from clerk_sync.core.queue import LEDGER_DUE_KEY, QueuedEvent
from clerk_sync.core.settings import Settings
from tests.conftest import queue_length, settings_env
from tests.factories import body_of, event, membership_data, new_svix_id, organization_data
from tests.models.support import deliver
from tests.throwaway_redis import (
    DURABLE,
    NO_CONFIG_NOR_INFO,
    NOT_DURABLE,
    StartRedis,
    start_redis,
)
from workers.processing import describe_event, record_retry

MINUTE_MS = 60_000
__all__ = ["start_redis"]


def status(settings: Settings, *args: str) -> Result:
    return CliRunner().invoke(main, ["status", *args], env=settings_env(settings))


def status_json(settings: Settings) -> dict[str, Any]:
    result = status(settings, "--json")
    assert result.exit_code == 0, result.output
    document: dict[str, Any] = json.loads(result.output)
    return document


def lines(output: str) -> dict[str, str]:
    return {line[:12].strip(): line[14:] for line in output.splitlines()}


def test_status_of_an_idle_system(settings: Settings, pg_engine: Engine) -> None:
    report = status_json(settings)
    # The machine's Redis may or may not be durable: test_status_says_whether_the_broker_is_durable
    # covers both on Redis servers of its own.
    assert report.pop("durable") in (True, False, None)
    assert report.pop("durability")["verdict"] in ("durable", "not_durable", "unknown")
    assert report == {
        "queue": {"name": settings.queue_name, "depth": 0},
        "ledger": {"size": 0, "next_due": None},
        "dead_letters": 0,
        "received": {"count": 0, "oldest": None},
        "last_applied": None,
        "broker_error": None,
    }
    result = status(settings)
    assert result.exit_code == 0, result.output
    shown = lines(result.output)
    assert shown.pop("durable")
    assert shown == {
        "queue": f"0 message(s) waiting in {settings.queue_name!r}",
        "ledger": "0 accepted, not yet finished",
        "dead letters": "0",
        "unfinished": "0 received (queued or being retried)",
        "last applied": "never",
    }


def test_status_shows_queue_ledger_dead_letters_and_ages(
    settings: Settings, pg_engine: Engine, redis_client: redis.Redis[bytes]
) -> None:
    now_ms = int(time.time() * 1000)
    organization = organization_data("org_1")
    applied_id = new_svix_id()
    deliver(pg_engine, event("organization.created", organization), svix_id=applied_id)
    poison = membership_data(organization)
    del poison["public_user_data"]["user_id"]
    for _ in range(2):
        deliver(pg_engine, event("organizationMembership.created", poison))
    retrying = describe_event(
        new_svix_id(),
        body_of(event("organization.updated", organization)),
        now_ms - 10 * MINUTE_MS,
    )
    record_retry(pg_engine, retrying, TimeoutError("lock wait"))
    newer = describe_event(new_svix_id(), "{}", now_ms - MINUTE_MS)
    record_retry(pg_engine, newer, TimeoutError("lock wait"))
    publisher = Publisher(settings)
    first_queued = new_svix_id()
    publisher.publish(QueuedEvent(first_queued, "{}", now_ms - 3 * MINUTE_MS))
    publisher.publish(QueuedEvent(new_svix_id(), "{}", now_ms))
    assert queue_length(redis_client, settings.queue_name) == 2
    assert redis_client.zcard(LEDGER_DUE_KEY) == 2

    report = status_json(settings)

    assert report["queue"] == {"name": settings.queue_name, "depth": 2}
    assert report["ledger"]["size"] == 2
    assert report["ledger"]["next_due"]["svix_id"] == first_queued
    assert 175 < report["ledger"]["next_due"]["age_seconds"] < 240
    assert report["dead_letters"] == 2
    assert report["received"]["count"] == 2
    assert report["received"]["oldest"]["svix_id"] == retrying.svix_id
    assert 595 < report["received"]["oldest"]["age_seconds"] < 660
    last = report["last_applied"]
    assert last["svix_id"] == applied_id
    assert last["event_type"] == "organization.created"
    assert last["event_timestamp"] == organization["updated_at"]
    assert last["event_time"] == "2026-01-01T00:00:00.000Z"
    assert 0 <= last["age_seconds"] < 60
    assert datetime.fromisoformat(last["processed_at"]) <= datetime.now(UTC)
    assert report["broker_error"] is None

    shown = lines(status(settings).output)
    assert shown["queue"] == f"2 message(s) waiting in {settings.queue_name!r}"
    assert shown["ledger"].startswith(f"2 accepted, not yet finished; next due {first_queued} ")
    assert "(received 3m" in shown["ledger"]
    assert shown["dead letters"] == "2  (clerk-sync events list --status dead)"
    assert shown["unfinished"].startswith(
        f"2 received (queued or being retried); oldest {retrying.svix_id} received 10m"
    )
    assert (
        f"organization.created {applied_id}, event time 2026-01-01T00:00:00.000Z"
        in (shown["last applied"])
    )


def test_status_reports_an_unreachable_broker_and_still_shows_the_database(
    settings: Settings, pg_engine: Engine
) -> None:
    deliver(pg_engine, event("organization.created", organization_data("org_1")))
    down = replace(settings, broker_url="redis://127.0.0.1:1/0", broker_publish_timeout_seconds=0.2)

    result = status(down)

    assert result.exit_code == 1
    shown = lines(result.output)
    assert shown["queue"].startswith("unknown: broker unreachable (ConnectionError")
    assert shown["dead letters"] == "0"
    assert "organization.created" in shown["last applied"]
    report = json.loads(status(down, "--json").output)
    assert report["queue"]["depth"] is None
    assert report["broker_error"].startswith("ConnectionError")


def test_status_with_a_filesystem_broker(settings: Settings, pg_engine: Engine) -> None:
    dev = replace(settings, broker_url="filesystem://")
    result = status(dev)
    assert result.exit_code == 0, result.output
    assert lines(result.output)["queue"] == "n/a (the broker is not Redis)"
    assert lines(result.output)["durable"].startswith("not checked: the broker is not Redis")
    report = json.loads(status(dev, "--json").output)
    assert report["queue"]["depth"] is None
    assert report["durable"] is None
    assert report["durability"]["verdict"] == "not_checked"


def test_status_says_whether_the_broker_is_durable(
    settings: Settings, pg_engine: Engine, start_redis: StartRedis
) -> None:
    durable = replace(settings, broker_url=start_redis(*DURABLE))
    assert lines(status(durable).output)["durable"] == "yes"
    assert status_json(durable)["durable"] is True

    not_durable = replace(settings, broker_url=start_redis(*NOT_DURABLE))
    result = status(not_durable)
    assert result.exit_code == 0, result.output
    assert lines(result.output)["durable"].startswith("NO: appendonly is off")
    report = status_json(not_durable)
    assert report["durable"] is False
    assert report["durability"]["maxmemory_policy"] == "allkeys-lru"
    assert len(report["durability"]["reasons"]) == 2

    unknown = replace(settings, broker_url=start_redis(*DURABLE, *NO_CONFIG_NOR_INFO))
    assert lines(status(unknown).output)["durable"].startswith("unknown: appendonly could be")
    report = status_json(unknown)
    assert report["durable"] is None
    assert report["durability"]["verdict"] == "unknown"
    assert report["queue"]["depth"] == 0
