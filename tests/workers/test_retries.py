"""Transient failures are retried with backoff; exhausted or poison events are dead-lettered.

The transient failure is real: the test holds the PostgreSQL advisory lock that the worker takes
for an organization, so the worker's ``lock_timeout`` expires (SQLSTATE 55P03) until released.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import Engine, select

from clerk_sync.core.settings import Settings
from models.tables import organizations
from tests.conftest import Send, inbox_row, wait_for
from tests.factories import event, membership_data, organization_data

pytestmark = pytest.mark.worker


def org_names(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return list(connection.execute(select(organizations.c.name)).scalars())


def test_transient_failure_is_retried_until_applied(
    settings: Settings,
    pg_engine: Engine,
    send: Send,
    start_worker: Any,
    hold_organization_lock: Any,
) -> None:
    release = hold_organization_lock("org_busy")
    svix_id = send(event("organization.created", organization_data("org_busy", name="Busy")))
    start_worker(replace(settings, max_retries=20))

    failing = wait_for(lambda: (row := inbox_row(pg_engine, svix_id)) and row["last_error"] and row)
    assert failing["status"] == "received"
    assert "LockNotAvailable" in failing["last_error"]
    assert org_names(pg_engine) == []

    release()
    applied = wait_for(
        lambda: (row := inbox_row(pg_engine, svix_id)) and row["status"] == "applied" and row
    )
    assert applied["last_error"] is None
    assert applied["attempts"] > 1
    assert org_names(pg_engine) == ["Busy"]


def test_exhausted_retries_dead_letter_the_event(
    settings: Settings,
    pg_engine: Engine,
    send: Send,
    start_worker: Any,
    hold_organization_lock: Any,
) -> None:
    hold_organization_lock("org_stuck")
    payload = event("organization.created", organization_data("org_stuck", name="Stuck"))
    svix_id = send(payload)
    start = time.monotonic()
    start_worker(replace(settings, max_retries=2))

    dead = wait_for(
        lambda: (row := inbox_row(pg_engine, svix_id)) and row["status"] == "dead" and row, 60
    )
    assert "LockNotAvailable" in dead["last_error"]
    assert "Traceback" in dead["last_error"]
    assert dead["attempts"] >= 3
    assert dead["event_type"] == "organization.created"
    assert time.monotonic() - start > settings.retry_backoff_seconds
    assert org_names(pg_engine) == []


def test_poison_event_is_dead_lettered_at_once_without_harming_others(
    settings: Settings, pg_engine: Engine, send: Send, start_worker: Any
) -> None:
    org = organization_data("org_fine", name="Fine")
    poison = membership_data(org)
    del poison["public_user_data"]["user_id"]
    poison_id = send(event("organizationMembership.created", poison))
    good_id = send(event("organization.created", org))
    worker = start_worker(settings)

    dead = wait_for(
        lambda: (row := inbox_row(pg_engine, poison_id)) and row["status"] == "dead" and row
    )
    assert dead["attempts"] == 1
    assert "public_user_data.user_id" in dead["last_error"]
    wait_for(lambda: (row := inbox_row(pg_engine, good_id)) and row["status"] == "applied")
    assert org_names(pg_engine) == ["Fine"]
    assert "retry" not in worker.log().lower()
