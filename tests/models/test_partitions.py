"""The inbox by month on PostgreSQL (migration 0009, ``models.partitions``): the migration moves
a database holding events without losing a row; dedupe still holds across months; purge drops
whole months; rebuild reads every partition; partitions are created ahead idempotently."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from click.testing import CliRunner
from sqlalchemy import Engine, create_engine, select, text

from clerk_sync.cli import main
from clerk_sync.core.settings import Settings
from models.database import make_engine, transaction
from models.inbox import purge_events
from models.migrate import alembic_config, upgrade
from models.partitions import (
    DEFAULT_PARTITION,
    create_partition,
    is_partitioned,
    months_ahead,
    partition_for,
    partitions,
)
from models.payload_hash import payload_hash
from models.tables import webhook_event_ids, webhook_events
from tests.conftest import POSTGRES_ADMIN_URL, empty_tables
from tests.factories import body_of, event, membership_data, new_svix_id, organization_data
from tests.models.support import organization_rows
from workers.app import celery_configuration, create_celery_app
from workers.partitioning import PARTITIONS_TASK, create_partitions_ahead
from workers.processing import apply_event, describe_event

WORKSPACE_KEY = "workspace"
MONTHS = [datetime(2025, month, 10, 12, tzinfo=UTC) for month in range(1, 7)]


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def deliver_at(engine: Engine, payload: dict[str, Any] | str, at: datetime, svix_id: str) -> str:
    body = payload if isinstance(payload, str) else body_of(payload)
    return apply_event(engine, describe_event(svix_id, body, ms(at)), WORKSPACE_KEY)


def inbox(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        found = connection.execute(select(webhook_events).order_by(webhook_events.c.svix_id))
        return [dict(row) for row in found.mappings()]


def ids(engine: Engine) -> dict[str, datetime]:
    with engine.connect() as connection:
        return {
            row.svix_id: row.received_at for row in connection.execute(select(webhook_event_ids))
        }


def table_exists(engine: Engine, name: str) -> bool:
    with engine.connect() as connection:
        return bool(
            connection.execute(text("SELECT to_regclass(:n) IS NOT NULL"), {"n": name}).scalar_one()
        )


@pytest.fixture
def blank_url() -> Iterator[str]:
    name = f"clerk_sync_partitions_{uuid.uuid4().hex[:8]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def old_inbox_rows() -> list[dict[str, Any]]:
    """Rows as a 0008 database holds them: several months, every status, a conflict row (the
    second body under an svix id), a replayed event, one years ahead (a clock gone wrong)."""
    rows = []
    for number, moment in enumerate(MONTHS):
        for status in ("applied", "skipped", "dead", "received"):
            body = json.dumps({"n": number, "status": status})
            rows.append(
                {
                    "svix_id": f"msg_{number}_{status}",
                    "event_type": "organization.created",
                    "status": status,
                    "attempts": 1,
                    "last_error": "boom" if status == "dead" else None,
                    "payload": body,
                    "received_at": moment,
                    "replay_count": 0,
                    "payload_hash": payload_hash(body),
                    "conflict_of": None,
                    "user_id": f"user_{number}",
                }
            )
    rows.append(
        {**rows[0], "svix_id": "msg_0_applied~0123456789abcdef", "status": "conflict",
         "payload": "{}", "conflict_of": "msg_0_applied", "received_at": MONTHS[2]}
    )  # fmt: skip
    rows.append({**rows[1], "svix_id": "msg_replayed", "replay_count": 2,
                 "last_replayed_at": MONTHS[5]})  # fmt: skip
    rows.append(
        {**rows[2], "svix_id": "msg_far_future", "received_at": datetime(2031, 1, 1, tzinfo=UTC)}
    )
    return rows


def test_0009_moves_a_database_holding_events_into_monthly_partitions(blank_url: str) -> None:
    config = alembic_config(blank_url)
    command.upgrade(config, "0008")
    engine = make_engine(blank_url)
    try:
        with engine.begin() as connection:
            columns = ", ".join(old_inbox_rows()[0])
            for row in old_inbox_rows():
                row.setdefault("last_replayed_at", None)
                names = ", ".join(row)
                values = ", ".join(f":{name}" for name in row)
                connection.execute(
                    text(f"INSERT INTO webhook_events ({names}) VALUES ({values})"),  # noqa: S608
                    row,
                )
        assert columns
        before = inbox(engine)
        assert len(before) == len(MONTHS) * 4 + 3

        upgrade(blank_url)

        assert inbox(engine) == before, "every row, every column, as it was"
        assert ids(engine) == {row["svix_id"]: row["received_at"] for row in before}
        with engine.connect() as connection:
            assert is_partitioned(connection)
            months = partitions(connection)
            assert [partition_for(moment) for moment in MONTHS] == months[: len(MONTHS)]
            assert months_ahead(connection, datetime.now(UTC)) >= 3
            # Each row is in its month's partition (the far-future one in the default).
            for moment in MONTHS:
                name = partition_for(moment).name
                held = connection.execute(text(f"SELECT count(*) FROM {name}")).scalar_one()  # noqa: S608
                assert held == 4 + (1 if moment in (MONTHS[0], MONTHS[2]) else 0)
            far = partition_for(datetime(2031, 1, 1)).name
            held_far = connection.execute(text(f"SELECT svix_id FROM {far}")).scalars()  # noqa: S608
            assert list(held_far) == ["msg_far_future"], "every month holding events has its own"
            stray = connection.execute(text(f"SELECT count(*) FROM {DEFAULT_PARTITION}"))  # noqa: S608
            assert stray.scalar_one() == 0
            key = connection.execute(
                text(
                    "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
                    "WHERE conname = 'pk_webhook_events'"
                )
            ).scalar_one()
            assert key == "PRIMARY KEY (svix_id, received_at)"

        # Dedupe across months: a copy of a January event received now is the January row; a
        # different body under its id is a conflict row of its own.
        copy = old_inbox_rows()[0]
        assert deliver_at(engine, copy["payload"], datetime.now(UTC), copy["svix_id"]) == "applied"
        assert len(inbox(engine)) == len(before)
        other = body_of(event("organization.created", organization_data("org_other")))
        assert deliver_at(engine, other, datetime.now(UTC), copy["svix_id"]) == "conflict"
        assert len(inbox(engine)) == len(before) + 1
        assert organization_rows(engine) == []

        command.downgrade(config, "0008")
        with engine.connect() as connection:
            assert not is_partitioned(connection)
        after_downgrade = inbox(engine)
        assert len(after_downgrade) == len(before) + 1
        assert [
            row for row in after_downgrade if row["svix_id"] in {r["svix_id"] for r in before}
        ] == before
        assert not table_exists(engine, "webhook_event_ids")
    finally:
        engine.dispose()


@pytest.fixture
def engine(pg_engine: Engine) -> Iterator[Engine]:
    """The session's PostgreSQL database, with partitions for ``MONTHS`` (created here)."""
    with transaction(pg_engine) as connection:
        for moment in MONTHS:
            create_partition(connection, partition_for(moment))
    yield pg_engine
    empty_tables(pg_engine)


def test_purge_drops_whole_months_and_deletes_the_rest(engine: Engine) -> None:
    organization = organization_data("org_p")
    sent: dict[str, datetime] = {}
    for moment in MONTHS[:3]:
        for n in range(3):
            svix_id = new_svix_id()
            payload = event("organization.created", organization_data(f"org_{moment.month}_{n}"))
            assert deliver_at(engine, payload, moment, svix_id) == "applied"
            sent[svix_id] = moment
    # A dead letter in February: kept by purge, so February is not dropped, only emptied of
    # what purge deletes.
    poison = membership_data(organization)
    del poison["public_user_data"]["user_id"]
    dead = new_svix_id()
    assert (
        deliver_at(engine, event("organizationMembership.created", poison), MONTHS[1], dead)
        == "dead"
    )

    purged = purge_events(engine, datetime(2025, 3, 1, tzinfo=UTC))

    assert purged == 6
    assert not table_exists(engine, partition_for(MONTHS[0]).name), "January dropped"
    assert table_exists(engine, partition_for(MONTHS[1]).name), "February holds a dead letter"
    left = {row["svix_id"]: row["status"] for row in inbox(engine)}
    assert left == {dead: "dead"} | {s: "applied" for s, at in sent.items() if at == MONTHS[2]}
    assert set(ids(engine)) == set(left), "the purged events' ids went with them"
    # A purged id is forgotten: a late copy is applied again (harmless: version guards).
    january = next(s for s, at in sent.items() if at == MONTHS[0])
    assert deliver_at(engine, event("organization.created", organization_data("org_late")),
                      MONTHS[0], january) == "applied"  # fmt: skip
    assert table_exists(engine, DEFAULT_PARTITION)


def test_rebuild_reads_every_month(engine: Engine) -> None:
    for moment in MONTHS:
        payload = event("organization.created", organization_data(f"org_{moment.month}"))
        assert deliver_at(engine, payload, moment, new_svix_id()) == "applied"
    live = organization_rows(engine)
    assert len(live) == len(MONTHS)

    result = CliRunner().invoke(
        main,
        ["rebuild", "--yes"],
        env={
            "DATABASE_URL": engine.url.render_as_string(hide_password=False),
            "CLERK_SYNC_WORKSPACE_METADATA_KEY": WORKSPACE_KEY,
        },
    )

    assert result.exit_code == 0, result.output
    assert [row["id"] for row in organization_rows(engine)] == [row["id"] for row in live]


def test_partitions_ahead_are_created_once(engine: Engine) -> None:
    later = datetime(2031, 5, 20, tzinfo=UTC)
    stray = new_svix_id()
    payload = event("organization.created", organization_data("org_stray"))
    assert deliver_at(engine, payload, datetime(2031, 6, 3, tzinfo=UTC), stray) == "applied"
    with engine.connect() as connection:
        held = connection.execute(text(f"SELECT svix_id FROM {DEFAULT_PARTITION}")).scalars()  # noqa: S608
        assert stray in list(held)

    created = create_partitions_ahead(engine, later)

    assert created == [partition_for(datetime(2031, month, 1)).name for month in (5, 6, 7, 8)]
    assert create_partitions_ahead(engine, later) == [], "idempotent"
    with engine.connect() as connection:
        assert months_ahead(connection, later) == 3
        june = partition_for(datetime(2031, 6, 1)).name
        moved = connection.execute(text(f"SELECT svix_id FROM {june}")).scalars()  # noqa: S608
        assert list(moved) == [stray], "the default partition's row moved into its month"
    result = CliRunner().invoke(
        main,
        ["events", "partitions", "--months-ahead", "1"],
        env={"DATABASE_URL": engine.url.render_as_string(hide_password=False)},
    )
    assert result.exit_code == 0, result.output
    assert f"{june}  2031-06-01" in result.output
    with transaction(engine) as connection:  # leave the session's database as it was
        for name in created:
            connection.execute(text(f"DROP TABLE {name}"))


def test_beat_creates_partitions_ahead_through_the_worker_app(
    settings: Settings, engine: Engine
) -> None:
    """Always scheduled (nothing to do on SQLite); the task the worker registers creates what
    is missing, which for the session's database (migrated now) is nothing."""
    schedule = celery_configuration(settings)["beat_schedule"]["partitions-ahead"]
    assert schedule == {"task": PARTITIONS_TASK, "schedule": timedelta(hours=6)}
    app = create_celery_app(settings)
    try:
        assert app.tasks[PARTITIONS_TASK]() == []
        with engine.connect() as connection:
            assert months_ahead(connection, datetime.now(UTC)) >= 3
    finally:
        app.clerk_sync_runtime.engine.dispose()


def test_nothing_to_partition_on_sqlite(sqlite_url: str) -> None:
    sqlite = make_engine(sqlite_url)
    try:
        assert create_partitions_ahead(sqlite) == []
        with sqlite.connect() as connection:
            assert not is_partitioned(connection)
        result = CliRunner().invoke(
            main, ["events", "partitions"], env={"DATABASE_URL": sqlite_url}
        )
        assert result.exit_code == 0, result.output
        assert "not partitioned" in result.output
    finally:
        sqlite.dispose()


def test_a_month_the_inbox_is_too_busy_to_drop_is_deleted_row_by_row(engine: Engine) -> None:
    """A transaction reading the inbox holds the lock a drop needs: purge waits
    ``DROP_LOCK_TIMEOUT`` at most, keeps the month, and deletes its rows instead."""
    sent = [new_svix_id() for _ in range(2)]
    for n, svix_id in enumerate(sent):
        payload = event("organization.created", organization_data(f"org_busy_{n}"))
        assert deliver_at(engine, payload, MONTHS[0], svix_id) == "applied"
    with engine.connect() as reader:
        reader.execute(select(webhook_events.c.svix_id)).all()  # its lock held until rollback

        purged = purge_events(engine, datetime(2025, 2, 1, tzinfo=UTC))

        reader.rollback()
    assert purged == 2
    assert table_exists(engine, partition_for(MONTHS[0]).name)
    assert inbox(engine) == []
    assert ids(engine) == {}
