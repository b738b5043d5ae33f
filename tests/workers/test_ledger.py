"""The ledger of accepted events closes the window in which kombu's Redis transport can lose a
message: whatever the ingress acknowledged but the inbox never finished is published again."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
from sqlalchemy import Engine

from clerk_sync.core.ledger_scripts import LEDGER_FINISHED_KEY, LEDGER_HASHES_KEY
from clerk_sync.core.queue import LEDGER_DUE_KEY, LEDGER_MESSAGES_KEY
from clerk_sync.core.settings import Settings
from tests.conftest import Send, inbox_row, queue_length, wait_for
from tests.factories import event, organization_data
from workers.app import create_celery_app, sweep

pytestmark = pytest.mark.worker


def overdue(settings: Settings) -> float:
    return time.time() + settings.ledger_redeliver_after_seconds + 1


def test_accepted_events_are_in_the_ledger_until_their_outcomes_are_committed(
    settings: Settings,
    pg_engine: Engine,
    redis_client: redis.Redis[bytes],
    send: Send,
    start_worker: Any,
) -> None:
    """Every accepted event is in the ledger until its outcome is committed; then the worker's
    main process drops a batch's entries in the round trip that acknowledges its messages:
    every final outcome, not only ``applied``."""
    poison = organization_data("org_poison")
    del poison["name"]
    svix_ids = {
        "applied": send(event("organization.created", organization_data("org_ok"))),
        "skipped": send(event("session.created", {"object": "session", "id": "sess_1"})),
        "dead": send(event("organization.created", poison)),
    }
    for svix_id in svix_ids.values():
        assert redis_client.zscore(LEDGER_DUE_KEY, svix_id) is not None
        assert redis_client.hexists(LEDGER_MESSAGES_KEY, svix_id)

    start_worker(settings)
    for status, svix_id in svix_ids.items():
        wait_for(
            lambda svix_id=svix_id, status=status: (
                (row := inbox_row(pg_engine, svix_id)) and row["status"] == status
            )
        )
    wait_for(lambda: redis_client.zcard(LEDGER_DUE_KEY) == 0, 10)
    assert redis_client.hlen(LEDGER_MESSAGES_KEY) == 0
    assert queue_length(redis_client, settings.queue_name) == 0
    assert redis_client.hlen("unacked") == 0, "acknowledged"


def test_sweeper_republishes_an_event_whose_message_was_lost(
    settings: Settings,
    pg_engine: Engine,
    redis_client: redis.Redis[bytes],
    send: Send,
    start_worker: Any,
) -> None:
    svix_id = send(event("organization.created", organization_data("org_lost", name="Lost")))
    redis_client.delete(settings.queue_name)  # the message a killed worker took with it
    runtime = create_celery_app(settings).clerk_sync_runtime

    assert sweep(runtime, now=time.time()) == 0, "not yet overdue: left alone"
    assert queue_length(redis_client, settings.queue_name) == 0

    assert sweep(runtime, now=overdue(settings)) == 1
    assert queue_length(redis_client, settings.queue_name) == 1
    assert sweep(runtime, now=overdue(settings)) == 0, "postponed after re-publishing"

    start_worker(settings)
    applied = wait_for(
        lambda: (row := inbox_row(pg_engine, svix_id)) and row["status"] == "applied" and row
    )
    assert applied["attempts"] == 1
    wait_for(lambda: redis_client.zcard(LEDGER_DUE_KEY) == 0, 10)


def test_sweeper_drops_entries_whose_event_is_already_finished(
    settings: Settings,
    pg_engine: Engine,
    redis_client: redis.Redis[bytes],
    send: Send,
    start_worker: Any,
) -> None:
    worker = start_worker(settings)
    svix_id = send(event("organization.created", organization_data("org_done")))
    wait_for(lambda: (row := inbox_row(pg_engine, svix_id)) and row["status"] == "applied")
    worker.stop()
    # Past REMEMBER_FINISHED_SECONDS: the ingress no longer knows the event is finished.
    redis_client.delete(LEDGER_HASHES_KEY, LEDGER_FINISHED_KEY)
    send(event("organization.created", organization_data("org_done")), svix_id=svix_id)
    redis_client.delete(settings.queue_name)
    assert redis_client.zcard(LEDGER_DUE_KEY) == 1

    runtime = create_celery_app(settings).clerk_sync_runtime
    assert sweep(runtime, now=overdue(settings)) == 0
    assert redis_client.zcard(LEDGER_DUE_KEY) == 0
    assert queue_length(redis_client, settings.queue_name) == 0
