"""What operators watch: worker metrics, structured logs, and Flower over a real worker."""

from __future__ import annotations

import json
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine

from clerk_sync.core.settings import Settings
from tests.conftest import (
    FLOWER_AUTH,
    WEBHOOK_SECRET,
    Send,
    inbox_row,
    start_flower,
    wait_for,
)
from tests.factories import event, membership_data, organization_data
from tests.servers import Samples, answers, free_port, metric_samples

pytestmark = pytest.mark.worker


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return metric_samples(response.read().decode())


def events_total(status: str, event_type: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return (
        "clerk_sync_worker_events_total",
        frozenset({("status", status), ("event_type", event_type)}),
    )


def test_worker_metrics_count_outcomes_by_type_and_lag(
    settings: Settings, pg_engine: Engine, send: Send, start_worker: Any
) -> None:
    port = free_port()
    org = organization_data("org_metrics")
    poison = membership_data(org)
    del poison["public_user_data"]["user_id"]
    ids = [
        send(event("organization.created", org)),
        send(event("organizationMembership.created", membership_data(org))),
        send(event("session.created", {"object": "session", "id": "sess_1"})),
        send(event("organizationMembership.created", poison)),
    ]
    start_worker(replace(settings, worker_metrics_port=port))
    for svix_id in ids:
        wait_for(
            lambda svix_id=svix_id: (
                (row := inbox_row(pg_engine, svix_id)) and row["status"] != "received"
            )
        )
    wait_for(lambda: answers(f"http://127.0.0.1:{port}/metrics"))

    dead_membership = events_total("dead", "organizationMembership.created")
    samples = wait_for(lambda: (found := scrape(port)).get(dead_membership) and found)
    assert samples[events_total("applied", "organization.created")] == 1
    assert samples[events_total("applied", "organizationMembership.created")] == 1
    assert samples[events_total("skipped", "session.created")] == 1
    assert samples[("clerk_sync_worker_lag_seconds_count", frozenset())] == 2
    duration = "clerk_sync_worker_processing_duration_seconds_count"
    assert samples[(duration, frozenset({("event_type", "organization.created")}))] == 1


def test_worker_logs_are_json_with_event_context_and_no_personal_data(
    settings: Settings, pg_engine: Engine, send: Send, start_worker: Any
) -> None:
    org = organization_data("org_logs", public_metadata={"note": "secret-ish"})
    member = membership_data(org, identifier="private.person@example.com", first_name="Privy")
    svix_id = send(event("organizationMembership.created", member))
    worker = start_worker(settings)
    wait_for(lambda: (row := inbox_row(pg_engine, svix_id)) and row["status"] == "applied")
    wait_for(lambda: svix_id in worker.log())

    records = [json.loads(line) for line in worker.log().splitlines() if line.startswith("{")]
    assert records, worker.log()
    assert all({"event", "level", "timestamp", "logger"} <= set(r) for r in records)
    # Applied in a batch: the batch's line names it, with the types of the batch's events.
    (batch,) = [r for r in records if svix_id in r.get("svix_ids", {}).get("applied", [])]
    assert (batch["event"], batch["events"]) == ("batch processed", 1)
    assert batch["event_types"] == {"organizationMembership.created": 1}
    text = worker.log()
    for private in ("private.person@example.com", "Privy", WEBHOOK_SECRET, WEBHOOK_SECRET[6:]):
        assert private not in text


def test_flower_shows_tasks_processed_by_a_real_worker(
    settings: Settings,
    pg_engine: Engine,
    redis_client: redis.Redis[bytes],
    send: Send,
    start_worker: Any,
    tmp_path: Path,
) -> None:
    port = free_port()
    start_worker(settings)
    # Task events reach Flower through a Redis pattern subscription (kombu's fanout): an event
    # published before Flower subscribed is gone, so the event is sent only once it listens.
    patterns_before = redis_client.pubsub_numpat()
    flower = start_flower(settings, port, tmp_path / "flower.log")
    try:
        wait_for(lambda: redis_client.pubsub_numpat() > patterns_before, 60)
        svix_id = send(event("organization.created", organization_data("org_flower")))
        wait_for(lambda: (row := inbox_row(pg_engine, svix_id)) and row["status"] == "applied")
        auth = FLOWER_AUTH

        def processed_tasks() -> list[dict[str, Any]]:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/tasks", headers={"Authorization": auth}
            )
            try:
                with urllib.request.urlopen(request, timeout=2) as response:
                    tasks = json.loads(response.read())
            except OSError:
                return []
            return [
                task
                for task in tasks.values()
                if task["name"] == "clerk_sync.apply_event" and task["state"] == "SUCCESS"
            ]

        tasks = wait_for(processed_tasks, 60, interval=0.5)
        assert svix_id in tasks[0]["args"]
        assert "org_flower" not in tasks[0]["args"], "payloads are not shown in Flower"
        unauthenticated = urllib.request.Request(f"http://127.0.0.1:{port}/api/tasks")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(unauthenticated, timeout=2)
        assert refused.value.code == 401
    finally:
        flower.terminate()
        flower.wait(timeout=20)
