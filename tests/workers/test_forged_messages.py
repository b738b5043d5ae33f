"""Nobody applies an event Clerk did not sign: task messages carry a MAC of their arguments
(``clerk_sync.core.message_auth``), and a real worker refuses, counts and logs every message
without a valid one (Flower's ``async-apply``, a message pushed straight into Redis, a forged
ledger entry), while the ingress's, the sweeper's, the retries' and the replay's messages apply.
"""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
import redis
from celery import Celery
from click.testing import CliRunner
from sqlalchemy import Engine, delete, select

from clerk_sync.broker.messages import RedisTaskMessages
from clerk_sync.cli import main
from clerk_sync.core.message_auth import MessageAuthenticator
from clerk_sync.core.queue import (
    APPLY_EVENT_TASK,
    LEDGER_DUE_KEY,
    LEDGER_MESSAGES_KEY,
    QueuedEvent,
    broker_configuration,
)
from clerk_sync.core.settings import Settings
from models.inbox import EventFilter
from models.tables import organizations
from tests.conftest import (
    FLOWER_AUTH,
    MESSAGE_SECRET,
    Send,
    inbox_row,
    queue_length,
    wait_for,
)
from tests.factories import body_of, event, new_svix_id, organization_data
from tests.servers import answers, free_port, metric_samples
from tests.workers.conftest import flower_get
from workers.app import create_celery_app, sweep
from workers.replay import replay

pytestmark = pytest.mark.worker

ATTACKER_KEY = "attacker-guessed-key-0123456789abcdef0123456789"
FORGED = "clerk_sync_worker_forged_messages_total"


def organization_row(engine: Engine, org_id: str) -> dict[str, Any] | None:
    with engine.connect() as connection:
        row = connection.execute(
            select(organizations).where(organizations.c.id == org_id)
        ).one_or_none()
    return None if row is None else dict(row._mapping)


def forged_count(port: int, source: str = "queue") -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        samples = metric_samples(response.read().decode())
    return samples.get((FORGED, frozenset({("source", source)})), 0.0)


def drained(client: redis.Redis[bytes], settings: Settings) -> bool:
    """Nothing waiting and nothing unacknowledged: refused messages are acknowledged, they do
    not come back."""
    return queue_length(client, settings.queue_name) == 0 and client.hlen("unacked") == 0


def log_records(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def flower_task(port: int, task_id: str) -> dict[str, Any] | None:
    task: dict[str, Any] | None = flower_get(port, f"/api/task/info/{task_id}")
    return task


def test_macs_sign_with_the_first_secret_and_verify_with_any() -> None:
    old, new = "o" * 40, "n" * 40
    rotating = MessageAuthenticator([new, old])
    mac = MessageAuthenticator([old]).mac("msg_1", "{}", 5)
    assert rotating.verify("msg_1", "{}", 5, mac), "the old secret still verifies"
    assert rotating.mac("msg_1", "{}", 5) == MessageAuthenticator([new]).mac("msg_1", "{}", 5)
    assert not MessageAuthenticator([new]).verify("msg_1", "{}", 5, mac)
    for forged in [("msg_2", "{}", 5), ("msg_1", "{} ", 5), ("msg_1", "{}", 6)]:
        assert not rotating.verify(*forged, mac), forged
    # The svix id's length is signed: no other split of the same characters verifies.
    assert not rotating.verify("msg_", "1{}", 5, rotating.mac("msg_1", "{}", 5))
    for mac_value in (None, "", 12, mac.upper(), mac[:-1]):
        assert not rotating.verify("msg_1", "{}", 5, mac_value)
    assert not rotating.verify("msg_1", "{}", True, rotating.mac("msg_1", "{}", 1))


def test_the_worker_refuses_to_start_without_a_message_secret() -> None:
    result = CliRunner().invoke(main, ["worker"], env={"CLERK_SYNC_MESSAGE_SECRET": ""})
    assert result.exit_code != 0
    assert "CLERK_SYNC_MESSAGE_SECRET is not set" in result.output
    short = CliRunner().invoke(main, ["worker"], env={"CLERK_SYNC_MESSAGE_SECRET": "tiny-key"})
    assert short.exit_code != 0
    assert "CLERK_SYNC_MESSAGE_SECRET" in short.output
    assert "tiny-key" not in short.output, "the value is never echoed"


def test_flower_async_apply_of_a_forged_event_applies_nothing_and_is_shown_as_forged(
    settings: Settings,
    pg_engine: Engine,
    redis_client: redis.Redis[bytes],
    send: Send,
    start_worker: Any,
    flower: int,
) -> None:
    metrics_port = free_port()
    worker = start_worker(replace(settings, worker_metrics_port=metrics_port))
    wait_for(lambda: answers(f"http://127.0.0.1:{metrics_port}/metrics"))
    assert forged_count(metrics_port) == 0
    forged_org = organization_data("org_forged_by_flower", name="Forged Corp")
    forged_id = new_svix_id()
    payload = body_of(event("organization.created", forged_org))

    task_ids = []
    for args in (
        [forged_id, payload, int(time.time() * 1000)],
        [forged_id, payload, int(time.time() * 1000), "0" * 64],
    ):
        request = urllib.request.Request(
            f"http://127.0.0.1:{flower}/api/task/async-apply/{APPLY_EVENT_TASK}",
            data=json.dumps({"args": args}).encode(),
            headers={"Authorization": FLOWER_AUTH, "Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            task_ids.append(json.loads(response.read())["task-id"])

    wait_for(lambda: forged_count(metrics_port) == 2, 30)
    wait_for(lambda: drained(redis_client, settings), 30)
    for task_id in task_ids:
        task = wait_for(
            lambda task_id=task_id: (
                (found := flower_task(flower, task_id)) and found["state"] == "FAILURE" and found
            ),
            30,
            0.2,
        )
        assert "ForgedMessageError" in task["exception"]
        assert forged_id in task["args"]
        assert "Forged Corp" not in task["args"], "no payload in Flower"
    # A genuine event, through the ingress, still applies; the forged one never did.
    genuine = send(event("organization.created", organization_data("org_genuine")))
    wait_for(lambda: (row := inbox_row(pg_engine, genuine)) and row["status"] == "applied")
    assert organization_row(pg_engine, "org_forged_by_flower") is None
    assert inbox_row(pg_engine, forged_id) is None, "no inbox row for a forger's svix id"

    refusals = [
        record
        for record in log_records(worker.log())
        if record["event"] == "forged task message refused, not applied"
    ]
    assert {record["task_id"] for record in refusals} == set(task_ids)
    assert {(record["svix_id"], record["source"]) for record in refusals} == {(forged_id, "queue")}
    assert {record["reason"] for record in refusals} == {"unsigned", "bad_mac"}
    assert "Forged Corp" not in worker.log(), "no payload in the log"


@pytest.mark.parametrize("batch_size", [100, 1], ids=["batches", "one-task-per-event"])
def test_messages_pushed_straight_into_redis_without_a_valid_mac_are_never_applied(
    settings: Settings,
    pg_engine: Engine,
    redis_client: redis.Redis[bytes],
    send: Send,
    start_worker: Any,
    batch_size: int,
) -> None:
    settings = replace(settings, batch_size=batch_size, worker_metrics_port=free_port())
    celery = Celery("attacker", set_as_current=False)
    celery.conf.update(broker_configuration(settings))
    payload = body_of(event("organization.created", organization_data("org_pushed")))
    ids = [new_svix_id() for _ in range(3)]
    received_at_ms = int(time.time() * 1000)
    # A well-formed message signed with a guessed key, and one with the genuine arguments' MAC
    # for other arguments, LPUSHed onto the queue list; and Celery's own unsigned message.
    guessed = MessageAuthenticator([ATTACKER_KEY]).mac(ids[0], payload, received_at_ms)
    borrowed = MessageAuthenticator([MESSAGE_SECRET]).mac(ids[1], "{}", received_at_ms)
    messages = RedisTaskMessages(celery, settings.queue_name)
    for svix_id, mac in ((ids[0], guessed), (ids[1], borrowed)):
        key, raw = messages.build(QueuedEvent(svix_id, payload, received_at_ms, mac=mac))
        redis_client.lpush(key, raw)
    celery.send_task(
        APPLY_EVENT_TASK, args=[ids[2], payload, received_at_ms], queue=settings.queue_name
    )
    assert queue_length(redis_client, settings.queue_name) == 3

    worker = start_worker(settings)
    port = settings.worker_metrics_port
    wait_for(lambda: answers(f"http://127.0.0.1:{port}/metrics"))
    wait_for(lambda: forged_count(port) == 3, 30)
    wait_for(lambda: drained(redis_client, settings), 30)
    genuine = send(event("organization.created", organization_data("org_genuine_too")))
    wait_for(lambda: (row := inbox_row(pg_engine, genuine)) and row["status"] == "applied")
    assert organization_row(pg_engine, "org_pushed") is None
    assert all(inbox_row(pg_engine, svix_id) is None for svix_id in ids)
    assert forged_count(port) == 3, "refused once each: acknowledged, not redelivered"
    logged = {
        record["svix_id"]
        for record in log_records(worker.log())
        if record["event"] == "forged task message refused, not applied"
    }
    assert logged == set(ids)
    # Celery's own "Task ... received" line (one task per event only) shows the arguments' repr
    # its sender wrote in the message: a forger's own text. Nothing of ours shows the payload.
    ours = [
        record
        for record in log_records(worker.log())
        if record["logger"] != "celery.worker.strategy" or batch_size > 1
    ]
    assert ours
    assert "org_pushed" not in json.dumps(ours), "no payload in the log"


def test_the_sweeper_publishes_no_forged_ledger_entry_and_still_sweeps_genuine_ones(
    settings: Settings,
    pg_engine: Engine,
    redis_client: redis.Redis[bytes],
    send: Send,
    start_worker: Any,
) -> None:
    genuine = send(event("organization.created", organization_data("org_swept")))
    redis_client.delete(settings.queue_name)  # lost with a killed worker: only the ledger has it
    forged_id = new_svix_id()
    payload = body_of(event("organization.created", organization_data("org_ledger_forged")))
    for entry in ([payload, 1], [payload, 1, "f" * 64]):
        redis_client.hset(LEDGER_MESSAGES_KEY, forged_id, orjson.dumps(entry))
        redis_client.zadd(LEDGER_DUE_KEY, {forged_id: 0})
        runtime = create_celery_app(settings).clerk_sync_runtime
        due = time.time() + settings.ledger_redeliver_after_seconds + 1
        assert sweep(runtime, now=due) == 1, "the genuine entry alone"
        assert redis_client.hget(LEDGER_MESSAGES_KEY, forged_id) is None, "dropped"
        redis_client.zadd(LEDGER_DUE_KEY, {genuine: 0})
        assert queue_length(redis_client, settings.queue_name) == 1
        redis_client.delete(settings.queue_name)

    redis_client.zadd(LEDGER_DUE_KEY, {genuine: 0})
    assert sweep(create_celery_app(settings).clerk_sync_runtime, now=time.time()) == 1
    start_worker(settings)
    wait_for(lambda: (row := inbox_row(pg_engine, genuine)) and row["status"] == "applied")
    assert organization_row(pg_engine, "org_swept") is not None
    assert organization_row(pg_engine, "org_ledger_forged") is None
    assert inbox_row(pg_engine, forged_id) is None


def test_a_replayed_event_is_applied(
    settings: Settings, pg_engine: Engine, send: Send, start_worker: Any
) -> None:
    start_worker(settings)
    svix_id = send(event("organization.created", organization_data("org_replayed")))
    wait_for(lambda: (row := inbox_row(pg_engine, svix_id)) and row["status"] == "applied")
    with pg_engine.begin() as connection:
        connection.execute(delete(organizations).where(organizations.c.id == "org_replayed"))

    result = replay(settings, pg_engine, EventFilter(svix_ids=(svix_id,)), [svix_id], 10)
    assert result.replayed == 1
    wait_for(lambda: organization_row(pg_engine, "org_replayed") is not None, 30)
    row = inbox_row(pg_engine, svix_id)
    assert row is not None
    assert (row["status"], row["replay_count"]) == ("applied", 1)
    assert row["last_replayed_at"] <= datetime.now(UTC)
