"""``workers.rebuild``: the new tables replace the live ones at once. Readers polling during a
rebuild never see fewer rows than before; what live workers apply meanwhile is in the new
tables; a dry run reports the differences and keeps the live tables; the live tables' grants
follow them; a view on them keeps the old tables. Real PostgreSQL and SQLite."""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, delete, insert, select, text, update

from clerk_sync.cli import main
from clerk_sync.core.settings import Settings
from models.rebuilding import PREVIOUS_SCHEMA, SHADOW_SCHEMA, PreviousTablesKeptError
from models.tables import organization_memberships, organizations, users
from tests.factories import event, membership_data, organization_data, user_data
from tests.models.support import (
    WORKSPACE_KEY,
    deliver,
    organization_row,
    synced_tables,
    user_rows,
)
from workers.rebuild import rebuild

ORGANIZATIONS = 5
MEMBERS_EACH = 40


def settings_for(engine: Engine) -> Settings:
    return Settings(
        database_url=engine.url.render_as_string(hide_password=False),
        workspace_metadata_key=WORKSPACE_KEY,
    )


def fill(engine: Engine) -> int:
    """Organizations with members, delivered as the worker would; returns the memberships."""
    for index in range(ORGANIZATIONS):
        organization = organization_data(f"org_{index}")
        deliver(engine, event("organization.created", organization))
        for member in range(MEMBERS_EACH):
            data = membership_data(organization, user_id=f"user_{member}")
            deliver(engine, event("organizationMembership.created", data))
    return ORGANIZATIONS * MEMBERS_EACH


def membership_counter(engine: Engine) -> Callable[[], int]:
    """Count memberships as another application would: on SQLite a plain reader (WAL), which
    the rebuild's write transaction does not block."""
    if engine.dialect.name == "sqlite":
        path = engine.url.database
        assert path is not None
        reader = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        return lambda: int(
            reader.execute("SELECT count(*) FROM organization_memberships").fetchone()[0]
        )
    reader_engine = engine.engine

    def count() -> int:
        with reader_engine.connect() as connection:
            return int(
                connection.execute(text("SELECT count(*) FROM organization_memberships")).scalar()
                or 0
            )

    return count


def test_readers_never_see_the_tables_empty_or_partial_during_a_rebuild(engine: Engine) -> None:
    before = fill(engine)
    tables_before = synced_tables(engine)
    count = membership_counter(engine)
    counts: list[int] = []
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            counts.append(count())
            stop.wait(0.002)

    reader = threading.Thread(target=poll, daemon=True)
    reader.start()
    try:
        result = rebuild(settings_for(engine), engine, batch_size=5)
    finally:
        stop.set()
        reader.join(5)

    assert result.failures == []
    assert result.reapplied == before + ORGANIZATIONS
    assert len(counts) > 20, "the reader polled while the rebuild ran"
    assert min(counts) == before
    assert synced_tables(engine) == tables_before


def test_an_event_applied_live_during_a_rebuild_is_in_the_new_tables(pg_engine: Engine) -> None:
    fill(pg_engine)
    late = organization_data("org_live", name="Applied meanwhile")
    applied: list[str] = []

    def meanwhile(_events: int) -> None:
        if not applied:
            # Received long ago (a retried delivery): behind the rebuild's page position, so
            # only the catch-up at the swap can bring it to the new tables.
            applied.append(
                deliver(pg_engine, event("organization.created", late), received_at_ms=1)
            )

    result = rebuild(settings_for(pg_engine), pg_engine, batch_size=20, advance=meanwhile)

    assert applied == ["applied"]
    assert result.failures == []
    assert result.caught_up >= 1
    row = organization_row(pg_engine, "org_live")
    assert row is not None
    assert row["name"] == "Applied meanwhile"


def test_a_dry_run_reports_each_table_and_keeps_the_live_ones(engine: Engine) -> None:
    fill(engine)
    deliver(engine, event("user.created", user_data("user_kept")))
    stray = {**user_rows(engine)[0], "id": "user_stray", "synced_at": datetime.now(UTC)}
    with engine.begin() as connection:  # damage by hand: what the rebuild would repair
        connection.execute(
            delete(organization_memberships).where(organization_memberships.c.user_id == "user_0")
        )
        connection.execute(
            update(organizations).where(organizations.c.id == "org_1").values(name="renamed")
        )
        connection.execute(insert(users).values(stray))
    damaged = synced_tables(engine)
    env = {
        "DATABASE_URL": engine.url.render_as_string(hide_password=False),
        "CLERK_SYNC_WORKSPACE_METADATA_KEY": WORKSPACE_KEY,
    }

    result = CliRunner().invoke(main, ["rebuild", "--dry-run"], env=env)

    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    events = ORGANIZATIONS * (MEMBERS_EACH + 1) + 1
    assert lines[0] == f"Would rebuild from {events} event(s); the live tables are kept."
    table = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    members = ORGANIZATIONS * MEMBERS_EACH
    assert table["organizations"] == [str(ORGANIZATIONS), str(ORGANIZATIONS), "0", "0", "1"]
    assert table["organization_memberships"] == [
        str(members - ORGANIZATIONS),
        str(members),
        str(ORGANIZATIONS),
        "0",
        "0",
    ]
    assert table["users"] == ["2", "1", "0", "1", "0"]
    assert synced_tables(engine) == damaged
    if engine.dialect.name == "postgresql":
        assert _schemas(engine) == set()


def test_grants_follow_the_tables_and_a_view_keeps_the_old_ones(pg_engine: Engine) -> None:
    deliver(pg_engine, event("organization.created", organization_data("org_1", name="First")))
    role = f"reader_{uuid.uuid4().hex[:8]}"
    with pg_engine.begin() as connection:
        connection.execute(text(f"CREATE ROLE {role}"))
        connection.execute(text(f"GRANT SELECT ON organizations TO {role}"))
    try:
        assert rebuild(settings_for(pg_engine), pg_engine, 50).previous_kept is False
        assert _schemas(pg_engine) == set()
        with pg_engine.connect() as connection:
            granted = connection.execute(
                text("SELECT has_table_privilege(:role, 'organizations', 'SELECT')"),
                {"role": role},
            ).scalar_one()
        assert granted is True

        with pg_engine.begin() as connection:
            connection.execute(
                text("CREATE VIEW organization_names AS SELECT name FROM organizations")
            )
        result = rebuild(settings_for(pg_engine), pg_engine, 50)

        assert result.previous_kept is True
        assert _schemas(pg_engine) == {PREVIOUS_SCHEMA}
        with pg_engine.connect() as connection:
            assert connection.execute(select(organizations.c.name)).scalar_one() == "First"
            assert connection.execute(text("SELECT count(*) FROM organization_names")).scalar()
        # Another rebuild would drop the view with the old tables: it refuses instead.
        with pytest.raises(PreviousTablesKeptError, match=PREVIOUS_SCHEMA):
            rebuild(settings_for(pg_engine), pg_engine, 50)
        with pg_engine.connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM organization_names")).scalar()
    finally:
        with pg_engine.begin() as connection:
            connection.execute(text("DROP VIEW IF EXISTS organization_names"))
            connection.execute(text(f"DROP SCHEMA IF EXISTS {PREVIOUS_SCHEMA} CASCADE"))
            connection.execute(text(f"REVOKE ALL ON organizations FROM {role}"))
            connection.execute(text(f"DROP ROLE {role}"))


def _schemas(engine: Engine) -> set[str]:
    """Which of the rebuild's own schemas exist."""
    with engine.connect() as connection:
        names = connection.execute(
            text("SELECT nspname FROM pg_namespace WHERE nspname IN (:shadow, :previous)"),
            {"shadow": SHADOW_SCHEMA, "previous": PREVIOUS_SCHEMA},
        ).scalars()
        return set(names)
