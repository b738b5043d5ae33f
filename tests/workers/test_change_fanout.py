"""The change feed's fan-out (``workers.change_fanout``) to the application's own Celery task,
received by a real second Celery worker process (the application's, ``change_application``):
each change once the batch that made it commits, in id order, with its id as the task id; and
changes committed while nothing published them (a worker that crashed after its commit) go out
with the next run, at least once, without a gap."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, delete

from clerk_sync.core.settings import Settings
from models.changes import newest_change_id, read_position
from models.database import make_engine
from models.tables import sync_changes
from tests.conftest import REDIS_URL, ROOT, wait_for
from tests.factories import event, membership_data, organization_data
from tests.models.support import deliver
from tests.servers import stop_process
from tests.workers import change_application
from workers.change_fanout import FANOUT_CONSUMER, fan_out

pytestmark = pytest.mark.worker


@pytest.fixture
def feed_settings(settings: Settings) -> Settings:
    return settings.with_overrides(
        changes_task=change_application.TASK,
        changes_queue=f"application-changes-{uuid.uuid4().hex[:6]}",
    )


@pytest.fixture
def application_worker(feed_settings: Settings, tmp_path: Path) -> Iterator[Path]:
    """The application's Celery worker, consuming the fan-out's queue; yields its log."""
    log_path = tmp_path / "application-worker.log"
    env = {"CHANGE_APPLICATION_BROKER": REDIS_URL, "PYTHONUNBUFFERED": "1", "PATH": ""}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tests.workers.change_application",
                "worker",
                "--pool=solo",
                "--loglevel=INFO",
                f"--queues={feed_settings.changes_queue}",
                "--without-gossip",
                "--without-mingle",
                f"--hostname=application-{uuid.uuid4().hex[:6]}@%h",
            ],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: b"ready." in log_path.read_bytes() or process.poll() is not None, 60)
        assert process.poll() is None, log_path.read_text()
        yield log_path
    finally:
        stop_process(process)


def received(client: redis.Redis[bytes]) -> list[dict[str, Any]]:
    return [json.loads(item) for item in client.lrange(change_application.RECEIVED_KEY, 0, -1)]


def test_every_change_reaches_the_applications_worker_with_its_id(
    feed_settings: Settings,
    application_worker: Path,
    start_worker: Callable[..., Any],
    redis_client: redis.Redis[bytes],
    pg_engine: Engine,
) -> None:
    with pg_engine.begin() as connection:
        connection.execute(delete(sync_changes))
    start_worker(feed_settings)
    client = _send_client(feed_settings)
    organization = organization_data("org_fan", name="Fan")
    client(event("organization.created", organization))
    for number in range(3):
        member = membership_data(organization, membership_id=f"orgmem_{number}")
        client(event("organizationMembership.created", member))

    messages = wait_for(lambda: len(received(redis_client)) >= 4 and received(redis_client), 60)

    with pg_engine.connect() as connection:
        newest = newest_change_id(connection)
    changes = [message["change"] for message in messages]
    assert sorted(change["id"] for change in changes) == list(range(newest - 3, newest + 1))
    assert {(c["table"], c["entity_id"], c["operation"]) for c in changes} == {
        ("organizations", "org_fan", "insert"),
        *{("organization_memberships", f"orgmem_{n}", "insert") for n in range(3)},
    }
    assert all(m["task_id"] == f"clerk-sync-change-{m['change']['id']}" for m in messages)
    assert all(c["source"] and c["source"].startswith("msg_") for c in changes)
    with pg_engine.connect() as connection:
        assert read_position(connection, FANOUT_CONSUMER) == newest


def test_changes_no_one_published_go_out_with_the_next_run(
    feed_settings: Settings,
    application_worker: Path,
    redis_client: redis.Redis[bytes],
    pg_engine: Engine,
) -> None:
    """A worker that died between its commit and the publish: its changes are in the feed,
    after the fan-out's position; the next run (beat's, every few seconds) sends them."""
    with pg_engine.begin() as connection:
        connection.execute(delete(sync_changes))
    engine = make_engine(feed_settings.database_url)
    try:
        fan_out(engine, feed_settings)  # moves the position past the deletions above
        redis_client.delete(change_application.RECEIVED_KEY)
        # Committed by the worker's code path, never published (no fan-out ran after it).
        deliver(engine, event("organization.created", organization_data("org_crash")))
        deliver(engine, event("organization.created", organization_data("org_crash_2")))
        assert received(redis_client) == []

        assert fan_out(engine, feed_settings) == 2
        assert fan_out(engine, feed_settings) == 0, "the position moved past what was sent"
        messages = wait_for(lambda: len(received(redis_client)) >= 2 and received(redis_client), 60)
        assert [m["change"]["entity_id"] for m in messages] == ["org_crash", "org_crash_2"]
    finally:
        engine.dispose()


def _send_client(settings: Settings) -> Callable[[dict[str, Any]], str]:
    """Post payloads to the ingress app, as the ``send`` fixture does, for these settings."""
    from ingress import create_app
    from tests.conftest import body_of, new_svix_id, signed_headers

    app = create_app(settings).test_client()

    def post(payload: dict[str, Any]) -> str:
        svix_id = new_svix_id()
        body = body_of(payload)
        headers = signed_headers(settings.webhook_secrets[0], body, svix_id=svix_id)
        response = app.post("/webhook/clerk", data=body, headers=headers)
        assert response.status_code == 202, response.get_json()
        return svix_id

    return post


def test_the_gauges_show_the_newest_change_the_rows_kept_and_what_is_not_sent(
    feed_settings: Settings, redis_client: redis.Redis[bytes], pg_engine: Engine
) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from tests.servers import metric_samples
    from workers.gauges import PipelineGauges

    with pg_engine.begin() as connection:
        connection.execute(delete(sync_changes))
    engine = make_engine(feed_settings.database_url)
    try:
        fan_out(engine, feed_settings)
        for number in range(3):
            deliver(engine, event("organization.created", organization_data(f"org_{number}")))
    finally:
        engine.dispose()
    with pg_engine.connect() as connection:
        newest = newest_change_id(connection)

    registry = CollectorRegistry()
    registry.register(PipelineGauges(feed_settings, cache_seconds=0))
    samples = metric_samples(generate_latest(registry).decode())

    plain: frozenset[tuple[str, str]] = frozenset()
    assert samples[("clerk_sync_changes_newest_id", plain)] == newest
    assert samples[("clerk_sync_changes_rows", plain)] == 3
    assert samples[("clerk_sync_changes_not_fanned_out", plain)] == 3


def test_beat_runs_the_fan_out_and_the_retention_only_when_asked(settings: Settings) -> None:
    from workers.app import celery_configuration, create_celery_app
    from workers.change_fanout import FANOUT_TASK, PURGE_CHANGES_TASK

    assert not {"fan-out-changes", "purge-changes"} & set(
        celery_configuration(settings)["beat_schedule"]
    )
    asked = settings.with_overrides(changes_task="application.on_change", changes_retention_days=30)
    schedule = celery_configuration(asked)["beat_schedule"]
    assert schedule["fan-out-changes"]["task"] == FANOUT_TASK
    assert schedule["purge-changes"]["task"] == PURGE_CHANGES_TASK
    assert {FANOUT_TASK, PURGE_CHANGES_TASK} <= set(create_celery_app(asked).tasks)
