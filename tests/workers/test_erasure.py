"""Erasing a deleted user's personal data from the stored events: requested by ``user.deleted``
(on by default) and done by the periodic erasure beat schedules, for events that arrive late
as they are applied, on demand (``clerk-sync events redact``); the erased payloads still
rebuild the same tables; the 0005 migration finds the users of events stored before it. Real
PostgreSQL and SQLite."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from alembic import command
from click.testing import CliRunner
from sqlalchemy import Engine, create_engine, select, text, update

from clerk_sync.cli import main
from clerk_sync.core.settings import Settings
from models.migrate import alembic_config
from models.tables import erasure_requests, webhook_events
from tests.factories import (
    deleted_user_data,
    event,
    membership_data,
    new_svix_id,
    organization_data,
    user_data,
)
from tests.models.support import (
    RECEIVED_AT_MS,
    WORKSPACE_KEY,
    deliver,
    synced_tables,
    tombstone_rows,
)
from workers.app import celery_configuration
from workers.erasure import ERASE_TASK, erase_requested
from workers.processing import apply_batch, apply_event, describe_event
from workers.rebuild import rebuild

PERSONAL = ("Jane", "Tester", "jane.tester@example.com", "203.0.113.10", "Mozilla")
"""What the factories put in a payload about the person (names, address, IP, user agent)."""


def requested(engine: Engine) -> list[str]:
    with engine.connect() as connection:
        return list(connection.execute(select(erasure_requests.c.user_id)).scalars())


def test_beat_runs_the_erasure_every_sweep_interval() -> None:
    schedule = celery_configuration(Settings())["beat_schedule"]["erase-deleted-users"]
    assert schedule["task"] == ERASE_TASK
    assert schedule["schedule"].total_seconds() == Settings().ledger_sweep_interval_seconds


def stored(engine: Engine, svix_id: str) -> dict[str, Any]:
    with engine.connect() as connection:
        row = connection.execute(
            select(webhook_events.c.payload, webhook_events.c.user_id).where(
                webhook_events.c.svix_id == svix_id
            )
        ).one()
    return {"document": json.loads(row.payload), "payload": row.payload, "user_id": row.user_id}


def history(engine: Engine, **kwargs: Any) -> dict[str, str]:
    """Jane signs up, changes her name, joins two organizations; Bob joins one. Svix id by name."""
    organization = organization_data("org_1")
    other = organization_data("org_2")
    events = {
        "created": event("user.created", user_data("user_jane")),
        "updated": event(
            "user.updated",
            user_data("user_jane", last_name="Tester-Smith", updated_at=RECEIVED_AT_MS),
        ),
        "joined": event(
            "organizationMembership.created", membership_data(organization, user_id="user_jane")
        ),
        "joined_other": event(
            "organizationMembership.created", membership_data(other, user_id="user_jane")
        ),
        "bob": event(
            "organizationMembership.created",
            membership_data(organization, user_id="user_bob", first_name="Bob"),
        ),
    }
    ids = {}
    for name, payload in events.items():
        ids[name] = new_svix_id()
        body = json.dumps(payload)
        incoming = describe_event(ids[name], body, RECEIVED_AT_MS)
        assert apply_event(engine, incoming, WORKSPACE_KEY, **kwargs) == "applied"
    return ids


def test_user_deleted_erases_the_personal_data_of_the_stored_events(engine: Engine) -> None:
    ids = history(engine)
    bob_before = stored(engine, ids["bob"])["payload"]
    assert stored(engine, ids["joined"])["user_id"] == "user_jane"
    assert any(word in stored(engine, ids["created"])["payload"] for word in PERSONAL)

    deleted = new_svix_id()
    assert deliver(engine, event("user.deleted", deleted_user_data("user_jane")), svix_id=deleted)
    assert requested(engine) == ["user_jane"]
    assert "jane.tester@example.com" in stored(engine, ids["created"])["payload"], "not yet"

    assert erase_requested(engine) == 1

    assert requested(engine) == []
    assert erase_requested(engine) == 0
    for name in ("created", "updated", "joined", "joined_other"):
        erased = stored(engine, ids[name])
        assert not [word for word in PERSONAL if word in erased["payload"]], name
        assert erased["document"]["data"]["created_at"] > 0
    assert stored(engine, ids["created"])["document"]["data"]["id"] == "user_jane"
    member = stored(engine, ids["joined"])["document"]["data"]["public_user_data"]
    assert member["user_id"] == "user_jane"
    assert member["identifier"] is None
    assert "203.0.113.10" not in stored(engine, deleted)["payload"]
    assert stored(engine, ids["bob"])["payload"] == bob_before, "another user's events are kept"


def test_an_event_about_a_deleted_user_arriving_late_is_erased_too(engine: Engine) -> None:
    deliver(engine, event("user.deleted", deleted_user_data("user_jane")))
    late = new_svix_id()
    joined = membership_data(organization_data("org_1"), user_id="user_jane")

    assert deliver(engine, event("organizationMembership.created", joined), svix_id=late)

    assert not [word for word in PERSONAL if word in stored(engine, late)["payload"]]


def test_the_erased_events_rebuild_the_same_tables(engine: Engine) -> None:
    history(engine)
    deliver(engine, event("user.deleted", deleted_user_data("user_jane")))
    assert erase_requested(engine) == 1
    tables, tombstones = synced_tables(engine), tombstone_rows(engine)
    with engine.begin() as connection:  # the events as stored, erased: and the tables lost
        connection.execute(update(webhook_events).values(processed_at=None))

    settings = Settings(
        database_url=engine.url.render_as_string(hide_password=False),
        workspace_metadata_key=WORKSPACE_KEY,
    )
    result = rebuild(settings, engine, batch_size=2)

    assert result.failures == []
    assert synced_tables(engine) == tables
    assert tombstone_rows(engine) == tombstones


def test_with_the_setting_off_payloads_stay_until_redacted_by_hand(engine: Engine) -> None:
    ids = history(engine, erase_personal_data=False)
    incoming = describe_event(
        new_svix_id(),
        json.dumps(event("user.deleted", deleted_user_data("user_jane"))),
        RECEIVED_AT_MS,
    )
    apply_event(engine, incoming, WORKSPACE_KEY, erase_personal_data=False)
    assert "jane.tester@example.com" in stored(engine, ids["created"])["payload"]
    env = {"DATABASE_URL": engine.url.render_as_string(hide_password=False)}

    declined = CliRunner().invoke(
        main, ["events", "redact", "--user", "user_jane"], env=env, input="n\n"
    )
    assert declined.exit_code == 1
    assert "Erase the personal data of 5 stored event(s) about user_jane?" in declined.output
    assert "jane.tester@example.com" in stored(engine, ids["created"])["payload"]

    result = CliRunner().invoke(main, ["events", "redact", "--user", "user_jane", "--yes"], env=env)

    assert result.exit_code == 0, result.output
    assert result.output == "Erased personal data from 5 of 5 event(s) about user_jane\n"
    assert not [word for word in PERSONAL if word in stored(engine, ids["joined"])["payload"]]
    again = CliRunner().invoke(main, ["events", "redact", "--user", "user_jane", "--yes"], env=env)
    assert again.output == "Erased personal data from 0 of 5 event(s) about user_jane\n"


def test_the_migration_finds_the_user_of_events_stored_before_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'before-0005.db'}"
    command.upgrade(alembic_config(url), "0004")
    engine = create_engine(url)
    joined = membership_data(organization_data("org_1"), user_id="user_jane")
    rows = {
        "msg_user": event("user.updated", user_data("user_jane")),
        "msg_member": event("organizationMembership.updated", joined),
        "msg_organization": event("organization.updated", organization_data("org_1")),
    }
    with engine.begin() as connection:
        for svix_id, payload in rows.items():
            connection.execute(
                text(
                    "INSERT INTO webhook_events (svix_id, event_type, status, attempts, payload, "
                    "received_at) VALUES (:id, :type, 'applied', 1, :payload, '2026-01-01')"
                ),
                {"id": svix_id, "type": payload["type"], "payload": json.dumps(payload)},
            )

    command.upgrade(alembic_config(url), "head")

    with engine.connect() as connection:
        found = dict(connection.execute(text("SELECT svix_id, user_id FROM webhook_events")).all())
    engine.dispose()
    assert found == {"msg_user": "user_jane", "msg_member": "user_jane", "msg_organization": None}


def test_a_batch_erases_too(engine: Engine) -> None:
    """The worker's batch path: the user's events and its deletion in one transaction."""
    payloads = [
        event("user.created", user_data("user_jane")),
        event(
            "organizationMembership.created",
            membership_data(organization_data("org_1"), user_id="user_jane"),
        ),
        event("user.deleted", deleted_user_data("user_jane")),
    ]
    events = [
        describe_event(new_svix_id(), json.dumps(payload), RECEIVED_AT_MS + index)
        for index, payload in enumerate(payloads)
    ]

    results = apply_batch(engine, events, WORKSPACE_KEY)

    assert {result.status for result in results.values()} == {"applied"}
    assert requested(engine) == ["user_jane"]
    erase_requested(engine)
    for incoming in events:
        assert not [
            word for word in PERSONAL if word in stored(engine, incoming.svix_id)["payload"]
        ]
