"""``clerk-sync events list|show|replay|purge``: on real PostgreSQL/SQLite, Redis and (for replay)
real Celery worker processes. Events are recorded through the worker's own code path."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from alembic import command
from click.testing import CliRunner, Result
from sqlalchemy import Connection, Engine, column, create_engine, insert, select, table, text

from clerk_sync.cli import main
from clerk_sync.cli.events import REPLAY_CONFIRM_ABOVE
from clerk_sync.core.message_auth import MessageAuthenticator
from clerk_sync.core.queue import LEDGER_DUE_KEY, LEDGER_MESSAGES_KEY
from clerk_sync.core.settings import Settings, SettingsError
from models.migrate import alembic_config, upgrade
from models.tables import webhook_events
from tests.conftest import MESSAGE_SECRET, REDIS_URL, Send, queue_length, settings_env, wait_for
from tests.factories import (
    BASE_TIME_MS,
    body_of,
    deleted_organization_data,
    event,
    membership_data,
    new_svix_id,
    organization_data,
)
from tests.models.histories import ClerkHistory
from tests.models.support import deliver, inbox_row, synced_state
from workers.app import (
    PURGE_EVENTS_TASK,
    celery_configuration,
    create_celery_app,
    purge,
)
from workers.processing import dead_letter, describe_event, record_retry
from workers.runtime import WorkerRuntime

DAY_MS = 86_400_000
NOW_MS = int(time.time() * 1000)


def url_of(engine: Engine) -> str:
    return engine.url.render_as_string(hide_password=False)


def run(env: dict[str, str], *args: str, input: str | None = None) -> Result:
    """``clerk-sync ARGS`` in-process, configured from ``env`` like a real invocation."""
    return CliRunner().invoke(main, list(args), env=env, input=input, catch_exceptions=False)


def database_env(engine: Engine) -> dict[str, str]:
    return {
        "DATABASE_URL": url_of(engine),
        "CELERY_BROKER_URL": REDIS_URL,
        "CLERK_SYNC_QUEUE": f"clerk-sync-test-{uuid.uuid4().hex[:6]}",
    }


def poison_membership(organization: dict[str, Any]) -> dict[str, Any]:
    """A membership Clerk never sends: without ``public_user_data.user_id`` (dead at once)."""
    data = membership_data(organization)
    del data["public_user_data"]["user_id"]
    return event("organizationMembership.created", data)


def exhausted(engine: Engine, payload: dict[str, Any], *, received_at_ms: int) -> str:
    """Dead-letter an event as the worker does when its retries run out (real traceback)."""
    svix_id = new_svix_id()
    incoming = describe_event(svix_id, body_of(payload), received_at_ms)
    try:
        raise TimeoutError("the database kept timing out")
    except TimeoutError as error:
        dead_letter(engine, incoming, error)
    return svix_id


def statuses(engine: Engine) -> dict[str, str]:
    with engine.connect() as connection:
        return dict(
            connection.execute(select(webhook_events.c.svix_id, webhook_events.c.status)).all()
        )


@pytest.fixture
def inbox(engine: Engine) -> dict[str, str]:
    """A small inbox on each dialect: two organizations, events of every status, spread over
    receipt times (days ago) and event times."""
    acme = organization_data("org_acme", name="Acme")
    globex = organization_data("org_globex", name="Globex", created_at=BASE_TIME_MS + 5)
    ids = {
        "acme_created": new_svix_id(),
        "globex_created": new_svix_id(),
        "acme_member": new_svix_id(),
        "session": new_svix_id(),
        "poison": new_svix_id(),
    }
    deliver(
        engine,
        event("organization.created", acme),
        svix_id=ids["acme_created"],
        received_at_ms=NOW_MS - 5 * DAY_MS,
    )
    deliver(
        engine,
        event("organization.created", globex, timestamp=BASE_TIME_MS + DAY_MS),
        svix_id=ids["globex_created"],
        received_at_ms=NOW_MS - 4 * DAY_MS,
    )
    deliver(
        engine,
        event("organizationMembership.created", membership_data(acme, user_id="user_1")),
        svix_id=ids["acme_member"],
        received_at_ms=NOW_MS - 3 * DAY_MS,
    )
    deliver(
        engine,
        event("session.created", {"object": "session", "id": "sess_1"}),
        svix_id=ids["session"],
        received_at_ms=NOW_MS - 2 * DAY_MS,
    )
    deliver(
        engine, poison_membership(globex), svix_id=ids["poison"], received_at_ms=NOW_MS - DAY_MS
    )
    return ids


# -- list ------------------------------------------------------------------------------------


def listed(engine: Engine, *args: str) -> list[str]:
    result = run(database_env(engine), "events", "list", "--json", *args)
    assert result.exit_code == 0, result.output
    return [row["svix_id"] for row in json.loads(result.output)]


def test_list_shows_a_table_newest_first(engine: Engine, inbox: dict[str, str]) -> None:
    result = run(database_env(engine), "events", "list")

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == [
        "RECEIVED",
        "(UTC)",
        "SVIX",
        "ID",
        "TYPE",
        "STATUS",
        "TRIES",
        "REPLAYS",
        "ORGANIZATION",
        "EVENT",
        "TIME",
        "(UTC)",
        "ERROR",
    ]
    order = [inbox[name] for name in ("poison", "session", "acme_member", "globex_created")]
    order.append(inbox["acme_created"])
    assert [line.split()[2] for line in lines[1:6]] == order
    poison_line = lines[1]
    assert "organizationMembership.created" in poison_line
    assert " dead " in poison_line
    assert "org_globex" in poison_line
    assert "PoisonEventError" in poison_line
    assert lines[-1] == "(5 events)"


def test_list_filters(engine: Engine, inbox: dict[str, str]) -> None:
    assert listed(engine, "--status", "dead") == [inbox["poison"]]
    assert listed(engine, "--status", "dead", "--status", "skipped") == [
        inbox["poison"],
        inbox["session"],
    ]
    assert listed(engine, "--type", "organization.created") == [
        inbox["globex_created"],
        inbox["acme_created"],
    ]
    assert listed(engine, "--type", "organizationMembership.*") == [
        inbox["poison"],
        inbox["acme_member"],
    ]
    assert listed(engine, "--org", "org_acme") == [inbox["acme_member"], inbox["acme_created"]]
    assert listed(engine, "--org", "org_globex", "--status", "applied") == [inbox["globex_created"]]
    # Receipt time: durations mean "that long ago"; --until is exclusive.
    assert listed(engine, "--since", "50h") == [inbox["poison"], inbox["session"]]
    assert listed(engine, "--since", "78h", "--until", "50h") == [inbox["acme_member"]]
    received = datetime.fromtimestamp((NOW_MS - 4 * DAY_MS) / 1000, UTC)
    assert listed(engine, "--until", received.isoformat()) == [inbox["acme_created"]]
    # Event time (the envelope's timestamp): only globex.created is dated a day later.
    later = datetime.fromtimestamp((BASE_TIME_MS + DAY_MS) / 1000, UTC)
    assert listed(engine, "--time-field", "event", "--since", later.isoformat()) == [
        inbox["globex_created"]
    ]
    assert listed(engine, "--time-field", "event", "--since", str(BASE_TIME_MS + DAY_MS)) == [
        inbox["globex_created"]
    ]
    assert listed(engine, "--type", "user.created") == []


def test_list_limit_and_json(engine: Engine, inbox: dict[str, str]) -> None:
    env = database_env(engine)

    limited = run(env, "events", "list", "--limit", "2")
    assert limited.exit_code == 0, limited.output
    assert len(limited.output.splitlines()) == 1 + 2 + 1
    assert "more match" in limited.output

    rows = json.loads(run(env, "events", "list", "--json", "--status", "dead").output)
    assert rows == [
        {
            "svix_id": inbox["poison"],
            "event_type": "organizationMembership.created",
            "status": "dead",
            "organization_id": "org_globex",
            "attempts": 1,
            "replay_count": 0,
            "last_replayed_at": None,
            "event_timestamp": BASE_TIME_MS + 60_000,
            "event_time": "2026-01-01T00:01:00.000Z",
            "received_at": rows[0]["received_at"],
            "processed_at": rows[0]["processed_at"],
            "last_error": "PoisonEventError: data.public_user_data.user_id is missing or not a "
            "string",
        }
    ]
    received_at = datetime.fromisoformat(rows[0]["received_at"])
    assert abs(received_at.timestamp() * 1000 - (NOW_MS - DAY_MS)) < 1
    assert json.loads(run(env, "events", "list", "--json", "--org", "org_none").output) == []
    assert run(env, "events", "list", "--org", "org_none").output == "No events match.\n"


def test_list_refuses_malformed_options(engine: Engine) -> None:
    env = database_env(engine)
    for args in (["--since", "yesterday"], ["--status", "lost"], ["--limit", "-1"]):
        result = CliRunner().invoke(main, ["events", "list", *args], env=env)
        assert result.exit_code == 2, (args, result.output)
    assert "is not a time" in CliRunner().invoke(main, ["events", "list", "--since", "x"]).output


# -- show ------------------------------------------------------------------------------------


def test_show_prints_status_error_with_traceback_and_pretty_payload(engine: Engine) -> None:
    payload = event("organization.created", organization_data("org_stuck", name="Stuck"))
    svix_id = exhausted(engine, payload, received_at_ms=NOW_MS)
    env = database_env(engine)

    result = run(env, "events", "show", svix_id)

    assert result.exit_code == 0, result.output
    output = result.output
    assert f"svix id       {svix_id}" in output
    assert "status        dead" in output
    assert "organization  org_stuck" in output
    assert "replays       0" in output
    assert "last error:\nTraceback (most recent call last):" in output
    assert "TimeoutError: the database kept timing out" in output
    pretty = output.split("payload:\n", 1)[1]
    assert json.loads(pretty) == payload
    assert '\n  "type": "organization.created"' in pretty

    as_json = json.loads(run(env, "events", "show", svix_id, "--json").output)
    assert as_json["payload"] == body_of(payload)
    assert as_json["status"] == "dead"
    assert "Traceback" in as_json["last_error"]


def test_show_unknown_event_fails(engine: Engine) -> None:
    result = CliRunner().invoke(main, ["events", "show", "msg_nope"], env=database_env(engine))
    assert result.exit_code == 1
    assert "no event with svix id 'msg_nope'" in result.output


def test_show_keeps_a_payload_that_is_not_json(engine: Engine) -> None:
    svix_id = new_svix_id()
    deliver(engine, "not json {", svix_id=svix_id)
    result = run(database_env(engine), "events", "show", svix_id)
    assert result.exit_code == 0, result.output
    assert result.output.endswith("payload:\nnot json {\n")


# -- replay without a worker -----------------------------------------------------------------


def test_replay_needs_ids_or_a_filter(settings: Settings) -> None:
    result = CliRunner().invoke(main, ["events", "replay"], env=settings_env(settings))
    assert result.exit_code == 2
    assert "give event ids or a filter" in result.output


def test_replay_dry_run_changes_nothing(
    settings: Settings, pg_engine: Engine, redis_client: redis.Redis[bytes]
) -> None:
    dead_ids = [new_svix_id(), new_svix_id()]
    for svix_id in dead_ids:
        assert deliver(pg_engine, poison_membership(organization_data()), svix_id=svix_id) == "dead"
    deliver(pg_engine, event("organization.created", organization_data("org_1")))
    before = [inbox_row(pg_engine, svix_id) for svix_id in dead_ids]

    result = run(settings_env(settings), "events", "replay", "--status", "dead", "--dry-run")

    assert result.exit_code == 0, result.output
    assert all(svix_id in result.output for svix_id in dead_ids)
    assert result.output.splitlines()[-1] == "Would replay 2 events"
    assert [inbox_row(pg_engine, svix_id) for svix_id in dead_ids] == before
    assert queue_length(redis_client, settings.queue_name) == 0
    assert redis_client.zcard(LEDGER_DUE_KEY) == 0


def test_replay_records_and_enqueues_through_the_ledger(
    settings: Settings, pg_engine: Engine, redis_client: redis.Redis[bytes]
) -> None:
    """Without a worker: each replayed event is set back to ``received``, its replay recorded,
    and its stored payload queued as the task message the ingress would send (ledger first)."""
    applied_id = new_svix_id()
    deliver(
        pg_engine, event("organization.created", organization_data("org_1")), svix_id=applied_id
    )
    dead_id = new_svix_id()
    deliver(pg_engine, poison_membership(organization_data("org_1")), svix_id=dead_id)
    before = datetime.now(UTC)

    result = run(
        settings_env(settings), "events", "replay", applied_id, dead_id, "msg_missing", applied_id
    )

    assert result.exit_code == 0, result.output
    assert "Replayed 2 of 3" in result.output
    assert "msg_missing: no such event" in result.output
    for svix_id in (applied_id, dead_id):
        row = inbox_row(pg_engine, svix_id)
        assert row is not None
        assert row["status"] == "received"
        assert row["replay_count"] == 1
        assert row["last_replayed_at"] >= before
        assert row["processed_at"] is None
    assert queue_length(redis_client, settings.queue_name) == 2
    queued = [json.loads(message) for message in redis_client.lrange(settings.queue_name, 0, -1)]
    assert {message["headers"]["task"] for message in queued} == {"clerk_sync.apply_event"}
    arguments = [json.loads(base64.b64decode(message["body"]))[0] for message in queued]
    authenticator = MessageAuthenticator([MESSAGE_SECRET])
    assert all(authenticator.verify(*signed) for signed in arguments), "signed by the replay"
    assert sorted(signed[:3] for signed in arguments) == sorted(
        [svix_id, row["payload"], int(row["received_at"].timestamp() * 1000)]
        for svix_id in (applied_id, dead_id)
        if (row := inbox_row(pg_engine, svix_id))
    )
    assert redis_client.zcard(LEDGER_DUE_KEY) == 2
    stored = json.loads(redis_client.hget(LEDGER_MESSAGES_KEY, dead_id) or b"null")
    assert stored[0] == inbox_row(pg_engine, dead_id)["payload"]  # type: ignore[index]


def test_a_replay_of_many_events_asks_first(
    settings: Settings, pg_engine: Engine, redis_client: redis.Redis[bytes]
) -> None:
    """Above ``REPLAY_CONFIRM_ABOVE`` events a replay asks (declined: nothing changes); with
    --yes it does not."""
    for index in range(REPLAY_CONFIRM_ABOVE + 1):
        deliver(pg_engine, event("organization.created", organization_data(f"org_{index}")))

    declined = run(settings_env(settings), "events", "replay", "--status", "applied", input="n\n")

    assert declined.exit_code == 1
    assert f"Replay {REPLAY_CONFIRM_ABOVE + 1} events?" in declined.output
    assert queue_length(redis_client, settings.queue_name) == 0

    accepted = run(settings_env(settings), "events", "replay", "--status", "applied", "--yes")

    assert accepted.exit_code == 0, accepted.output
    assert "Replay " not in accepted.output
    assert queue_length(redis_client, settings.queue_name) == REPLAY_CONFIRM_ABOVE + 1


def test_replay_stops_cleanly_when_the_broker_is_down(
    settings: Settings, pg_engine: Engine
) -> None:
    dead_id = new_svix_id()
    deliver(pg_engine, poison_membership(organization_data("org_1")), svix_id=dead_id)
    down = replace(settings, broker_url="redis://127.0.0.1:1/0", broker_publish_timeout_seconds=0.2)

    result = CliRunner().invoke(
        main, ["events", "replay", "--status", "dead"], env=settings_env(down)
    )

    assert result.exit_code == 1, result.output
    assert "Replayed 0 of 1" in result.output
    assert "broker is unavailable" in result.output
    row = inbox_row(pg_engine, dead_id)
    assert row is not None
    assert (row["status"], row["replay_count"]) == ("dead", 0)


# -- replay with a real worker ---------------------------------------------------------------


LOCK = text("SELECT pg_advisory_lock(hashtextextended(:key, 0))")
UNLOCK_ALL = text("SELECT pg_advisory_unlock_all()")


@pytest.fixture
def organization_lock(pg_engine: Engine) -> Iterator[Connection]:
    """A session holding the worker's per-organization lock for ``org_stuck``, as a long
    transaction would; ``UNLOCK_ALL`` on it releases the lock."""
    connection = pg_engine.connect()
    connection.execute(LOCK, {"key": "organization:org_stuck"})
    yield connection
    connection.execute(UNLOCK_ALL)
    connection.close()


def status_of(engine: Engine, svix_id: str) -> str | None:
    row = inbox_row(engine, svix_id)
    return None if row is None else str(row["status"])


@pytest.mark.worker
def test_replay_of_dead_letters_end_to_end(
    settings: Settings,
    pg_engine: Engine,
    redis_client: redis.Redis[bytes],
    send: Send,
    start_worker: Any,
    organization_lock: Connection,
) -> None:
    """A dead letter (retries exhausted while its organization was locked) is replayed once
    the cause is gone, with a real worker; replaying again is harmless; replaying an applied
    event re-applies it idempotently; an event from long ago replays although its signature
    expired long ago (the stored payload is trusted, never re-verified)."""
    start_worker(replace(settings, max_retries=0))
    env = settings_env(settings)
    stuck = event("organization.created", organization_data("org_stuck", name="Stuck"))
    stuck_id = send(stuck)
    wait_for(lambda: status_of(pg_engine, stuck_id) == "dead", 60)
    fine_id = send(event("organization.created", organization_data("org_fine", name="Fine")))
    wait_for(lambda: status_of(pg_engine, fine_id) == "applied")
    dead = inbox_row(pg_engine, stuck_id)
    assert dead is not None
    assert "LockNotAvailable" in dead["last_error"]

    organization_lock.execute(UNLOCK_ALL)  # the cause is fixed
    result = run(env, "events", "replay", "--status", "dead")

    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == "Replayed 1 of 1"
    wait_for(lambda: status_of(pg_engine, stuck_id) == "applied")
    replayed = inbox_row(pg_engine, stuck_id)
    assert replayed is not None
    assert replayed["replay_count"] == 1
    assert replayed["last_replayed_at"] is not None
    assert replayed["attempts"] == dead["attempts"] + 1
    assert replayed["last_error"] is None
    assert [row["name"] for row in synced_state(pg_engine)[0]] == ["Fine", "Stuck"]
    wait_for(lambda: redis_client.zcard(LEDGER_DUE_KEY) == 0, 10)

    again = run(env, "events", "replay", "--status", "dead")
    assert again.output.splitlines()[-1] == "Replayed 0 of 0"
    assert status_of(pg_engine, stuck_id) == "applied"

    # An applied event replayed: re-applied (attempts grow), tables unchanged.
    tables_before = synced_state(pg_engine)
    result = run(env, "events", "replay", fine_id, stuck_id)
    assert result.output.splitlines()[-1] == "Replayed 2 of 2"

    def progress() -> list[tuple[str, int]]:
        found = [inbox_row(pg_engine, svix_id) for svix_id in (fine_id, stuck_id)]
        return [(row["status"], row["attempts"]) for row in found if row is not None]

    wait_for(lambda: progress() == [("applied", 2), ("applied", dead["attempts"] + 2)])
    assert synced_state(pg_engine) == tables_before
    assert inbox_row(pg_engine, stuck_id)["replay_count"] == 2  # type: ignore[index]

    # Dead-lettered two years ago: the Svix signature is long expired; replay applies it.
    two_years_ago = NOW_MS - 730 * DAY_MS
    old = organization_data(
        "org_old", name="Old", created_at=two_years_ago - DAY_MS, updated_at=two_years_ago
    )
    old_id = exhausted(
        pg_engine,
        event("organization.created", old, timestamp=two_years_ago),
        received_at_ms=two_years_ago,
    )
    result = run(env, "events", "replay", "--status", "dead", "--until", "365d")
    assert result.output.splitlines()[-1] == "Replayed 1 of 1"
    wait_for(lambda: status_of(pg_engine, old_id) == "applied")
    assert [row["name"] for row in synced_state(pg_engine)[0]] == ["Fine", "Old", "Stuck"]


@pytest.mark.worker
def test_replay_under_live_traffic_converges(
    settings: Settings,
    pg_engine: Engine,
    redis_client: redis.Redis[bytes],
    send: Send,
    start_worker: Any,
) -> None:
    """Replaying everything while the rest of a history is still arriving ends in the state
    Clerk holds, with every event applied."""
    history = ClerkHistory(organization_slots=3, user_count=3)
    for action in [
        (0, 0, 1, 1), (2, 0, 1, 1), (0, 1, 2, 1), (2, 1, 2, 1000), (1, 0, 4, 1), (5, 0, 1, 1),
        (3, 1, 2, 1), (5, 0, 5, 60_000), (1, 1, 2, 1), (4, 0, 0, 1), (6, 1, 0, 1), (2, 0, 2, 1),
        (0, 2, 1, 1), (3, 0, 1, 1), (1, 2, 3, 1),
    ]:  # fmt: skip
        history.perform(*action)
    half = len(history.events) // 2
    start_worker(settings)
    for delivery in history.events[:half]:
        send(json.loads(delivery.body), delivery.svix_id)
    wait_for(lambda: list(statuses(pg_engine).values()) == ["applied"] * half)

    def live() -> None:
        for delivery in history.events[half:]:
            send(json.loads(delivery.body), delivery.svix_id)
            time.sleep(0.02)

    sender = threading.Thread(target=live)
    sender.start()
    outputs = [run(settings_env(settings), "events", "replay", "--type", "organization*").output]
    outputs.append(run(settings_env(settings), "events", "replay", "--org", "org_A").output)
    sender.join()

    assert all(output.startswith("Replayed ") for output in outputs), outputs
    wait_for(
        lambda: (
            (found := statuses(pg_engine))
            and len(found) == len(history.events)
            and set(found.values()) == {"applied"}
        )
    )
    wait_for(lambda: redis_client.zcard(LEDGER_DUE_KEY) == 0, 10)
    assert synced_state(pg_engine) == (
        history.expected_organizations(),
        history.expected_memberships(),
    )
    with pg_engine.connect() as connection:
        replays = connection.execute(select(webhook_events.c.replay_count)).scalars().all()
    assert sum(replays) >= half


# -- purge -----------------------------------------------------------------------------------


def aged_inbox(engine: Engine) -> dict[str, str]:
    """Events of every status, 40 days old and 1 day old; one old event replayed just now."""
    org = organization_data("org_1")
    ids: dict[str, str] = {}
    for age_days in (40, 1):
        received_at_ms = NOW_MS - age_days * DAY_MS
        for name, payload in (
            ("applied", event("organization.created", organization_data())),
            ("skipped", event("session.created", {"id": "sess_1"})),
            ("dead", poison_membership(org)),
        ):
            svix_id = new_svix_id()
            deliver(engine, payload, svix_id=svix_id, received_at_ms=received_at_ms)
            ids[f"{name}_{age_days}d"] = svix_id
        received = describe_event(
            new_svix_id(), body_of(event("organization.created", org)), received_at_ms
        )
        record_retry(engine, received, TimeoutError("still trying"))
        ids[f"received_{age_days}d"] = received.svix_id
    replayed = new_svix_id()
    deliver(engine, event("organization.created", organization_data()), svix_id=replayed,
            received_at_ms=NOW_MS - 40 * DAY_MS)  # fmt: skip
    with engine.begin() as connection:
        connection.execute(
            webhook_events.update()
            .where(webhook_events.c.svix_id == replayed)
            .values(replay_count=1, last_replayed_at=datetime.now(UTC))
        )
    ids["replayed_40d"] = replayed
    return ids


def test_purge_deletes_old_applied_and_skipped_events_only(engine: Engine) -> None:
    ids = aged_inbox(engine)
    env = database_env(engine)

    dry = run(env, "events", "purge", "--older-than", "30d", "--dry-run")
    assert dry.output.startswith("Would purge 2 applied, skipped event(s) received before ")
    declined = run(env, "events", "purge", "--older-than", "30d", input="n\n")
    assert declined.exit_code == 1
    assert "Aborted" in declined.output
    assert len(statuses(engine)) == len(ids)

    result = run(env, "events", "purge", "--older-than", "30d", "--yes")

    assert result.exit_code == 0, result.output
    assert result.output.startswith("Purged 2 applied, skipped event(s)")
    assert set(statuses(engine)) == set(ids.values()) - {ids["applied_40d"], ids["skipped_40d"]}

    assert run(env, "events", "purge", "--older-than", "30d", "--yes").output == (
        "Nothing to purge.\n"
    )
    confirmed = run(env, "events", "purge", "--older-than", "720h", "--include-dead", input="y\n")
    assert confirmed.exit_code == 0, confirmed.output
    assert "Purged 1 applied, skipped, dead event(s)" in confirmed.output
    assert set(statuses(engine)) == {
        ids[name]
        for name in (
            "applied_1d", "skipped_1d", "dead_1d", "received_1d", "received_40d", "replayed_40d",
        )
    }  # fmt: skip


def test_purge_refuses_a_malformed_age(engine: Engine) -> None:
    for args in ([], ["--older-than", "30"], ["--older-than", "a month"]):
        result = CliRunner().invoke(main, ["events", "purge", *args], env=database_env(engine))
        assert result.exit_code == 2, (args, result.output)


def test_purge_is_an_opt_in_beat_task(settings: Settings, pg_engine: Engine) -> None:
    ids = aged_inbox(pg_engine)
    assert "purge-events" not in celery_configuration(settings)["beat_schedule"]
    app = create_celery_app(replace(settings, purge_after_days=30))
    idle = WorkerRuntime(settings, app)
    try:
        assert purge(idle) == 0, "unset: never purges, even if run by hand"
        assert len(statuses(pg_engine)) == len(ids)

        schedule = app.conf.beat_schedule
        assert schedule["purge-events"]["task"] == PURGE_EVENTS_TASK
        assert schedule["purge-events"]["schedule"] == timedelta(hours=1)
        assert "sweep-ledger" in schedule
        assert app.tasks[PURGE_EVENTS_TASK]() == 2
    finally:
        app.clerk_sync_runtime.engine.dispose()
        idle.engine.dispose()
    assert ids["applied_40d"] not in statuses(pg_engine)
    assert ids["dead_40d"] in statuses(pg_engine)


@pytest.mark.parametrize(("raw", "expected"), [(None, None), ("", None), ("30", 30), ("1", 1)])
def test_purge_after_days_setting(raw: str | None, expected: int | None) -> None:
    env = {} if raw is None else {"CLERK_SYNC_PURGE_AFTER_DAYS": raw}
    assert Settings.from_env(env).purge_after_days == expected


@pytest.mark.parametrize("raw", ["0", "-3", "30d", "x"])
def test_malformed_purge_after_days_is_refused(raw: str) -> None:
    with pytest.raises(SettingsError, match=r"^CLERK_SYNC_PURGE_AFTER_DAYS: "):
        Settings.from_env({"CLERK_SYNC_PURGE_AFTER_DAYS": raw})


# -- the 0002 migration ----------------------------------------------------------------------


@pytest.fixture
def blank_sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'migrating.db'}"


def test_migration_backfills_organization_ids_and_downgrades(blank_sqlite_url: str) -> None:
    """Events stored before 0002 get the organization they concern, read from the payload."""
    upgrade(blank_sqlite_url, "0001")
    org = organization_data("org_old")
    stored = {
        "msg_org": event("organization.updated", org),
        "msg_deleted": event("organization.deleted", deleted_organization_data("org_gone"), 1),
        "msg_member": event("organizationMembership.created", membership_data(org)),
        "msg_invitation": event("organizationInvitation.created", {"organization_id": "org_inv"}),
        "msg_user": event("user.created", {"id": "user_1"}),
        "msg_long": event("organization.created", organization_data("org_" + "x" * 80)),
    }
    rows = [
        {
            "svix_id": svix_id,
            "event_type": payload["type"],
            "status": "applied",
            "attempts": 1,
            "payload": body_of(payload),
            "received_at": datetime.now(UTC),
        }
        for svix_id, payload in stored.items()
    ]
    rows.append({**rows[0], "svix_id": "msg_garbage", "event_type": None, "payload": "{"})
    engine = create_engine(blank_sqlite_url)
    version_0001 = table("webhook_events", *(column(name) for name in rows[0]))
    with engine.begin() as connection:
        connection.execute(insert(version_0001), rows)

    upgrade(blank_sqlite_url)

    with engine.connect() as connection:
        found = dict(
            connection.execute(
                select(webhook_events.c.svix_id, webhook_events.c.organization_id)
            ).all()
        )
        counts = set(connection.execute(select(webhook_events.c.replay_count)).scalars())
    assert found == {
        "msg_org": "org_old",
        "msg_deleted": "org_gone",
        "msg_member": "org_old",
        "msg_invitation": "org_inv",
        "msg_user": None,
        "msg_long": None,
        "msg_garbage": None,
    }
    assert counts == {0}

    command.downgrade(alembic_config(blank_sqlite_url), "0001")
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM webhook_events")).scalar() == 7
    engine.dispose()
    upgrade(blank_sqlite_url)


def test_new_events_record_their_organization(engine: Engine) -> None:
    org = organization_data("org_new")
    membership_id = new_svix_id()
    deliver(engine, event("organizationMembership.deleted", membership_data(org), 5),
            svix_id=membership_id)  # fmt: skip
    row = inbox_row(engine, membership_id)
    assert row is not None
    assert row["organization_id"] == "org_new"
    assert row["replay_count"] == 0
    unknown = new_svix_id()
    deliver(engine, event("organization.created", {"id": 7}), svix_id=unknown)
    assert inbox_row(engine, unknown)["organization_id"] is None  # type: ignore[index]
    with engine.begin() as connection:  # the server default, for writers other than ours
        connection.execute(
            text(
                "INSERT INTO webhook_events (svix_id, status, attempts, payload, received_at) "
                "VALUES ('msg_defaults', 'applied', 1, '{}', :at)"
            ),
            {"at": datetime.now(UTC)},
        )
    assert inbox_row(engine, "msg_defaults")["replay_count"] == 0  # type: ignore[index]
