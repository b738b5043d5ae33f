"""Dead letters in plain sight: a dead-lettered event is a failed task in a real Flower (its
Failed tab and counter), with the error's class and message, and the task arguments Flower
shows name the svix id and event type, never the payload."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import Engine

from clerk_sync.core.settings import Settings
from tests.conftest import Send, inbox_row, wait_for
from tests.factories import event, membership_data, organization_data
from tests.workers.conftest import flower_get

pytestmark = pytest.mark.worker


def flower_tasks(port: int, state: str) -> dict[str, dict[str, Any]]:
    tasks: dict[str, dict[str, Any]] | None = flower_get(port, f"/api/tasks?state={state}")
    return tasks or {}


@pytest.mark.parametrize("batch_size", [100, 1], ids=["batches", "one-task-per-event"])
def test_a_dead_letter_is_a_failed_task_in_flower_with_its_error_and_no_payload(
    settings: Settings,
    pg_engine: Engine,
    send: Send,
    start_worker: Any,
    flower: int,
    batch_size: int,
) -> None:
    settings = replace(settings, batch_size=batch_size)
    start_worker(settings)
    org = organization_data("org_dead_letters", name="Dead Letter Holdings")
    poison = membership_data(org, identifier="privy.person@example.com", first_name="Privy")
    del poison["public_user_data"]
    dead_id = send(event("organizationMembership.created", poison))
    applied_id = send(event("organization.created", org))
    dead = wait_for(
        lambda: (row := inbox_row(pg_engine, dead_id)) and row["status"] == "dead" and row
    )
    wait_for(lambda: (row := inbox_row(pg_engine, applied_id)) and row["status"] == "applied")

    failed = wait_for(lambda: flower_tasks(flower, "FAILURE"), 30, 0.2)
    [task] = failed.values()
    assert task["name"] == "clerk_sync.apply_event"
    # The error's class and message, as the inbox has it (first line), and nothing more.
    reason = dead["last_error"].splitlines()[0]
    assert task["exception"].startswith("DeadLetterError("), task["exception"]
    assert reason.split(":")[0] in task["exception"], (reason, task["exception"])
    assert dead_id in task["args"]
    assert "organizationMembership.created" in task["args"]
    succeeded = wait_for(lambda: flower_tasks(flower, "SUCCESS"), 30, 0.2)
    [applied] = succeeded.values()
    assert applied_id in applied["args"]
    assert "organization.created" in applied["args"]
    shown = json.dumps([task, applied])
    for private in ("privy.person@example.com", "Privy", "Dead Letter Holdings"):
        assert private not in shown, private
    # The Failed counter of Flower's workers page counts it.
    workers = wait_for(
        lambda: (found := flower_get(flower, "/workers?json=1")) and found["data"] and found,
        30,
        0.2,
    )
    assert sum(row.get("task-failed", 0) for row in workers["data"]) == 1, workers
