"""The change feed (``models.changes``): what the triggers record for each write, who made it,
nothing for a write that changes nothing, positions, retention, and the PostgreSQL reader's
horizon and notifications."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, delete, select, text, update

from models.changes import (
    ChangeListener,
    changes_after,
    newest_change_id,
    purge_changes,
    read_position,
    save_position,
    summarise_feed,
)
from models.tables import organizations, sync_changes
from tests.conftest import wait_for
from tests.factories import (
    body_of,
    event,
    membership_data,
    organization_data,
    permission_data,
    role_data,
    user_data,
)
from tests.models.support import deliver
from workers.processing import apply_batch, describe_event

RECEIVED_AT_MS = 1_800_000_000_000


def clear_feed(engine: Engine) -> None:
    """Forget the changes the fixtures' emptying of the tables recorded."""
    with engine.begin() as connection:
        connection.execute(delete(sync_changes))


def feed(engine: Engine, after: int = 0) -> list[Any]:
    with engine.connect() as connection:
        return changes_after(connection, after, 10_000)


@pytest.fixture
def feed_engine(engine: Engine) -> Engine:
    clear_feed(engine)
    return engine


def test_each_write_is_recorded_with_its_source_and_changed_columns(feed_engine: Engine) -> None:
    engine = feed_engine
    org = organization_data("org_1", name="Acme", updated_at=1_000)
    deliver(engine, event("organization.created", org), svix_id="msg_created")
    renamed = {**org, "name": "Acme Inc", "updated_at": 2_000}
    deliver(engine, event("organization.updated", renamed), svix_id="msg_renamed")
    deliver(
        engine,
        event("organization.deleted", {"id": "org_1", "deleted": True}, 3_000),
        svix_id="msg_deleted",
    )

    changes = feed(engine)
    assert [(c.table, c.entity_id, c.operation, c.source) for c in changes] == [
        ("organizations", "org_1", "insert", "msg_created"),
        ("organizations", "org_1", "update", "msg_renamed"),
        ("organizations", "org_1", "delete", "msg_deleted"),
    ]
    inserted, renamed_change, deleted = changes
    assert "name" in inserted.columns
    assert "synced_at" not in inserted.columns
    assert renamed_change.columns == ["name", "updated_at"]
    assert renamed_change.values is not None
    assert renamed_change.values["name"] == "Acme Inc"
    assert "synced_at" not in renamed_change.values
    assert "synced_by" not in renamed_change.values
    assert deleted.columns == []
    assert deleted.values is not None
    assert deleted.values["name"] == "Acme Inc", "a deletion carries the row as it was"
    assert changes[0].id < changes[1].id < changes[2].id


def test_a_write_that_changes_nothing_records_nothing(feed_engine: Engine) -> None:
    engine = feed_engine
    org = organization_data("org_1", updated_at=1_000)
    deliver(engine, event("organization.created", org), svix_id="msg_1")
    deliver(engine, event("organization.created", org), svix_id="msg_1_again")  # same version
    deliver(engine, event("organization.updated", {**org, "updated_at": 500}))  # stale
    with engine.begin() as connection:  # synced_at (and synced_by) alone
        connection.execute(
            update(organizations).values(synced_at=text("CURRENT_TIMESTAMP"), synced_by="x")
        )
    assert [c.operation for c in feed(engine)] == ["insert"]


def test_deleting_an_organization_records_its_memberships_deleted_too(feed_engine: Engine) -> None:
    engine = feed_engine
    org = organization_data("org_1", updated_at=1_000)
    for number in range(2):
        member = membership_data(org, membership_id=f"orgmem_{number}", user_id=f"user_{number}")
        deliver(engine, event("organizationMembership.created", member))
    clear_feed(engine)
    status = deliver(
        engine,
        event("organization.deleted", {"id": "org_1", "deleted": True}, 9_000_000_000_000),
        svix_id="msg_gone",
    )
    assert status == "applied"
    deleted = {(c.table, c.entity_id, c.operation, c.source) for c in feed(engine)}
    assert deleted == {
        ("organization_memberships", "orgmem_0", "delete", "msg_gone"),
        ("organization_memberships", "orgmem_1", "delete", "msg_gone"),
        ("organizations", "org_1", "delete", "msg_gone"),
    }


def test_a_batch_records_each_event_under_its_own_svix_id(feed_engine: Engine) -> None:
    engine = feed_engine
    org = organization_data("org_1", updated_at=1_000)
    payloads = {
        "msg_org": event("organization.created", org),
        "msg_user": event("user.created", user_data("user_1")),
        "msg_member": event(
            "organizationMembership.created",
            membership_data(org, membership_id="orgmem_1", user_id="user_1"),
        ),
    }
    events = [
        describe_event(svix_id, body_of(payload), RECEIVED_AT_MS)
        for svix_id, payload in payloads.items()
    ]
    results = apply_batch(engine, events, "convexWorkspaceId")
    assert {result.status for result in results.values()} == {"applied"}
    sources = {(c.table, c.entity_id): c.source for c in feed(engine)}
    assert sources == {
        ("organizations", "org_1"): "msg_org",
        ("users", "user_1"): "msg_user",
        ("organization_memberships", "orgmem_1"): "msg_member",
    }


def test_a_position_is_saved_in_the_callers_transaction_and_never_moves_back(
    feed_engine: Engine,
) -> None:
    engine = feed_engine
    with engine.begin() as connection:
        assert read_position(connection, "app") == 0
        save_position(connection, "app", 7)
    with engine.connect() as connection, connection.begin() as transaction:
        save_position(connection, "app", 9)
        transaction.rollback()
    with engine.begin() as connection:
        assert read_position(connection, "app") == 7
        save_position(connection, "app", 3)
        assert read_position(connection, "app", lock=True) == 7


def test_purge_deletes_only_older_changes_and_the_summary_counts_what_stays(
    feed_engine: Engine,
) -> None:
    engine = feed_engine
    deliver(engine, event("organization.created", organization_data("org_1")))
    deliver(engine, event("organization.created", organization_data("org_2")))
    newest = feed(engine)[-1].id
    with engine.begin() as connection:
        first = connection.execute(select(sync_changes.c.id).order_by(sync_changes.c.id)).first()
        assert first is not None
        connection.execute(
            text("UPDATE sync_changes SET changed_at = :old WHERE id = :id"),
            {"old": "2020-01-01 00:00:00", "id": first.id},
        )
    with engine.begin() as connection:
        assert purge_changes(connection, timedelta(days=30)) == 1
        summary = summarise_feed(connection)
        assert (summary.newest_id, summary.rows) == (newest, 1)
        assert newest_change_id(connection) == newest


def test_a_change_not_yet_committed_holds_back_the_later_ones(pg_engine: Engine) -> None:
    """PostgreSQL: transaction A writes change 1, B writes change 2 and commits first; a reader
    must not move past 1 while A may still commit it."""
    clear_feed(pg_engine)
    deliver(pg_engine, event("organization.created", organization_data("org_0")))
    start = feed(pg_engine)[-1].id
    slow = pg_engine.connect()
    transaction = slow.begin()
    slow.execute(
        text(
            "INSERT INTO organizations (id, name, public_metadata, created_at, updated_at, "
            "synced_at, synced_by) VALUES ('org_slow', 'Slow', '{}', 1, 1, now(), 'msg_slow')"
        )
    )
    deliver(pg_engine, event("organization.created", organization_data("org_fast")))
    assert feed(pg_engine, start) == [], "change 2 is committed, but change 1 may still come"
    transaction.commit()
    slow.close()
    assert [c.entity_id for c in feed(pg_engine, start)] == ["org_slow", "org_fast"]


def test_a_rolled_back_change_does_not_hold_the_feed_back(pg_engine: Engine) -> None:
    clear_feed(pg_engine)
    with pg_engine.connect() as connection, connection.begin() as transaction:
        connection.execute(
            text(
                "INSERT INTO organizations (id, name, public_metadata, created_at, updated_at, "
                "synced_at) VALUES ('org_never', 'Never', '{}', 1, 1, now())"
            )
        )
        transaction.rollback()
    deliver(pg_engine, event("organization.created", organization_data("org_1")))
    assert [c.entity_id for c in feed(pg_engine)] == ["org_1"]


def test_a_listener_is_woken_when_changes_commit(pg_engine: Engine) -> None:
    clear_feed(pg_engine)
    woken: list[bool] = []
    with ChangeListener(pg_engine) as listener:
        assert listener.wait(0.2) is False, "nothing committed yet"

        def wait() -> None:
            woken.append(listener.wait(30))

        waiter = threading.Thread(target=wait)
        waiter.start()
        deliver(pg_engine, event("organization.created", organization_data("org_1")))
        waiter.join(35)
    assert woken == [True]
    wait_for(lambda: feed(pg_engine), 5)


def test_a_roles_new_permissions_are_recorded_on_each_member_it_reaches(
    feed_engine: Engine,
) -> None:
    """A derived change (a bulk UPDATE of the members holding the role) is recorded per member,
    under the svix id of the role event that caused it."""
    engine = feed_engine
    reports = permission_data("perm_reports", key="org:reports:read")
    billing = permission_data("perm_billing", key="org:billing:manage")
    role = role_data("role_billing", key="org:billing_manager", permissions=[reports])
    deliver(engine, event("role.created", role))
    organization = organization_data("org_1")
    for number in range(2):
        member = membership_data(
            organization,
            membership_id=f"orgmem_{number}",
            user_id=f"user_{number}",
            role="org:billing_manager",
        )
        deliver(engine, event("organizationMembership.created", member))
    clear_feed(engine)

    widened = {**role, "permissions": [reports, billing], "updated_at": role["updated_at"] + 1}
    assert deliver(engine, event("role.updated", widened), svix_id="msg_role") == "applied"

    members = [c for c in feed(engine) if c.table == "organization_memberships"]
    assert sorted(c.entity_id for c in members) == ["orgmem_0", "orgmem_1"]
    for change in members:
        assert (change.operation, change.source) == ("update", "msg_role")
        assert "permissions" in change.columns
        assert change.values is not None
        assert sorted(change.values["permissions"]) == ["org:billing:manage", "org:reports:read"]


def test_erasing_a_deleted_user_blanks_their_personal_data_in_the_feed(
    feed_engine: Engine,
) -> None:
    from workers.erasure import erase_requested

    engine = feed_engine
    organization = organization_data("org_1")
    for user_id in ("user_gone", "user_kept"):
        deliver(engine, event("user.created", user_data(user_id, first_name="Jane")))
        member = membership_data(
            organization, membership_id=f"orgmem_{user_id}", user_id=user_id, first_name="Jane"
        )
        deliver(engine, event("organizationMembership.created", member))
    deleted = {"id": "user_gone", "object": "user", "deleted": True}
    deliver(engine, event("user.deleted", deleted, 9_000_000_000_000))

    assert erase_requested(engine) == 1

    about: dict[tuple[str, str], list[Any]] = {}
    for change in feed(engine):
        about.setdefault((change.table, change.entity_id), []).append(change.values)
    for key in (("users", "user_gone"), ("organization_memberships", "orgmem_user_gone")):
        for values in about[key]:
            assert values is not None
            assert values["first_name"] is None, key
            assert values["id"] == key[1], "ids stay"
    for key in (("users", "user_kept"), ("organization_memberships", "orgmem_user_kept")):
        assert all(values["first_name"] == "Jane" for values in about[key]), key
