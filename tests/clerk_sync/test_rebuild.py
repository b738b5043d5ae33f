"""``clerk-sync rebuild``: empty the synced tables and re-apply the stored events through the same
mutation code. Property: after any realistic history, delivered in any order with duplicates,
the rebuilt tables equal the live ones (and what Clerk holds). On PostgreSQL and SQLite."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, delete, insert, select, update

from clerk_sync.cli import main
from models.tables import organization_memberships, organizations, tombstones, users, webhook_events
from tests.conftest import empty_tables
from tests.factories import (
    BASE_TIME_MS,
    body_of,
    event,
    membership_data,
    new_svix_id,
    organization_data,
)
from tests.models.histories import ClerkHistory
from tests.models.support import (
    WORKSPACE_KEY,
    deliver,
    rows,
    synced_state,
    tombstone_rows,
    user_rows,
)
from tests.models.test_convergence import deliveries, histories
from workers.processing import apply_event, describe_event

RECEIVED_AT_MS = 1_800_000_000_000


def rebuild(engine: Engine, *args: str, input: str | None = None) -> Result:
    env = {
        "DATABASE_URL": engine.url.render_as_string(hide_password=False),
        "CLERK_SYNC_WORKSPACE_METADATA_KEY": WORKSPACE_KEY,
    }
    return CliRunner().invoke(main, ["rebuild", *args], env=env, input=input)


def inbox(engine: Engine) -> list[dict[str, Any]]:
    return rows(engine, webhook_events, without=())


def test_rebuilt_tables_equal_the_live_ones_after_any_history(engine: Engine) -> None:
    @settings(
        max_examples=25,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,
    )
    @given(data=st.data(), history=histories())
    def rebuilds(data: Any, history: ClerkHistory) -> None:
        note(f"history: {history.events}")
        empty_tables(engine)
        sent = data.draw(deliveries(history.events), label="deliveries")
        # Receipt times from a few values: the rebuild's (received_at, svix_id) order differs
        # from the live order, and ties exercise its keyset pagination.
        offsets = data.draw(
            st.lists(st.sampled_from([0, 1, 2, 1000]), min_size=len(sent), max_size=len(sent)),
            label="receipt offsets",
        )
        for delivery, offset in zip(sent, offsets, strict=True):
            incoming = describe_event(delivery.svix_id, delivery.body, RECEIVED_AT_MS + offset)
            assert apply_event(engine, incoming, WORKSPACE_KEY) == "applied"
        live = synced_state(engine)
        assert live == (history.expected_organizations(), history.expected_memberships())
        recorded = inbox(engine)
        batch_size = data.draw(st.sampled_from(["1", "3", "200"]), label="batch size")

        result = rebuild(engine, "--yes", "--batch-size", batch_size)

        assert result.exit_code == 0, result.output
        assert result.output.startswith(f"Rebuilt from {len(recorded)} event(s): ")
        assert synced_state(engine) == live
        assert inbox(engine) == recorded, "rebuild leaves the inbox as it was"

    rebuilds()


def test_rebuild_restores_lost_tables_and_skips_dead_letters(engine: Engine) -> None:
    history = ClerkHistory(organization_slots=3, user_count=3)
    for action in [(0, 0, 1, 1), (2, 0, 1, 1), (0, 1, 2, 1), (3, 0, 1, 1), (6, 1, 0, 1)]:
        history.perform(*action)
    for delivery in history.events:
        deliver(engine, delivery.body, svix_id=delivery.svix_id)
    poison = membership_data(organization_data("org_poison"))
    del poison["public_user_data"]["user_id"]
    assert deliver(engine, event("organizationMembership.created", poison)) == "dead"
    assert deliver(engine, event("session.created", {"id": "sess_1"})) == "skipped"
    live, live_tombstones = synced_state(engine), tombstone_rows(engine)
    live_users = user_rows(engine)
    assert live[0]
    assert live[1]
    assert live_tombstones
    with engine.begin() as connection:  # lost, or damaged by hand
        connection.execute(delete(organization_memberships))
        connection.execute(update(organizations).values(name="damaged"))
        connection.execute(delete(tombstones))
        connection.execute(delete(users))

    result = rebuild(engine, "--yes")

    assert result.exit_code == 0, result.output
    organization_count, membership_count = len(live[0]), len(live[1])
    assert result.output == (
        f"Rebuilt from {len(history.events)} event(s): {organization_count} organization(s), "
        f"{membership_count} membership(s), {len(live_users)} user(s), "
        f"{len(live_tombstones)} tombstone(s)\n"
    )
    assert synced_state(engine) == live
    assert user_rows(engine) == live_users
    assert tombstone_rows(engine) == live_tombstones


def test_rebuild_asks_for_confirmation(engine: Engine) -> None:
    deliver(engine, event("organization.created", organization_data("org_1", name="Kept")))
    with engine.begin() as connection:
        connection.execute(update(organizations).values(name="edited"))

    declined = rebuild(engine, input="n\n")

    assert declined.exit_code == 1
    assert (
        "This replaces organizations (1 rows), organization_memberships (0), users (0) and "
        "tombstones (0) with tables re-made from 1 stored event(s). Continue? [y/N]"
    ) in declined.output
    assert "Aborted" in declined.output
    with engine.connect() as connection:
        assert connection.execute(select(organizations.c.name)).scalar_one() == "edited"

    accepted = rebuild(engine, input="y\n")

    assert accepted.exit_code == 0, accepted.output
    with engine.connect() as connection:
        assert connection.execute(select(organizations.c.name)).scalar_one() == "Kept"


def test_rebuild_reports_events_that_no_longer_apply(engine: Engine) -> None:
    """Should an applied event fail now (say, a handler became stricter), the rebuild goes on
    without it, names it and exits non-zero."""
    good = deliver(engine, event("organization.created", organization_data("org_good")))
    broken_id = new_svix_id()
    deliver(
        engine,
        event("organization.created", organization_data("org_broken")),
        svix_id=broken_id,
    )
    assert good == "applied"
    broken = organization_data("org_broken")
    del broken["name"]
    with engine.begin() as connection:
        connection.execute(
            update(webhook_events)
            .where(webhook_events.c.svix_id == broken_id)
            .values(payload=body_of(event("organization.created", broken)))
        )

    result = rebuild(engine, "--yes")

    assert result.exit_code == 1
    assert "Rebuilt from 1 event(s): 1 organization(s)" in result.output
    assert f"{broken_id}: PoisonEventError: data.name is missing or not a string" in result.output
    assert "1 event(s) could not be re-applied" in result.output
    assert [row["id"] for row in synced_state(engine)[0]] == ["org_good"]


def test_rebuild_of_an_empty_inbox_empties_the_tables(engine: Engine) -> None:
    deliver(engine, event("organization.created", organization_data("org_1"), BASE_TIME_MS))
    with engine.begin() as connection:
        connection.execute(delete(webhook_events))

    result = rebuild(engine, "--yes")

    assert result.exit_code == 0, result.output
    assert result.output.startswith("Rebuilt from 0 event(s): 0 organization(s)")
    assert synced_state(engine) == ([], [])


def test_rebuild_keeps_tombstones_no_event_explains(engine: Engine) -> None:
    """A tombstone that no stored event explains (``reconcile`` found the user gone) is kept,
    whatever its kind: the deletion stays known."""
    deliver(engine, event("organization.created", organization_data("org_1")))
    other = {
        "entity_type": "user",
        "entity_id": "user_gone",
        "organization_id": None,
        "created_at": None,
        "deleted_at": BASE_TIME_MS,
        "reason": "deleted",
        "synced_at": datetime.now(UTC),
    }
    with engine.begin() as connection:
        connection.execute(insert(tombstones).values(other))

    result = rebuild(engine, "--yes")

    assert result.exit_code == 0, result.output
    assert result.output.endswith("1 organization(s), 0 membership(s), 0 user(s), 1 tombstone(s)\n")
    assert [(row["entity_type"], row["entity_id"]) for row in tombstone_rows(engine)] == [
        ("user", "user_gone")
    ]
