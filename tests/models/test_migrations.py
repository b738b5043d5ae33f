"""``clerk-sync db upgrade``: migrations bring a brand-new database to head, idempotently, and
the schema they build is exactly ``models.tables.metadata``."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from click.testing import CliRunner
from sqlalchemy import create_engine, inspect, text

from clerk_sync.cli import main
from models.migrate import alembic_config, upgrade
from models.partitions import is_partition_name
from models.tables import metadata
from tests.conftest import POSTGRES_ADMIN_URL
from tests.factories import event, organization_data
from tests.models.support import deliver, organization_rows


@pytest.fixture
def blank_postgresql_url() -> Iterator[str]:
    """A brand-new, empty PostgreSQL database, dropped afterwards."""
    name = f"clerk_sync_migrate_{uuid.uuid4().hex[:8]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def blank_sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'brand-new.db'}"


@pytest.fixture(params=["postgresql", "sqlite"])
def blank_url(request: pytest.FixtureRequest) -> str:
    """A database nothing has touched yet, on each dialect."""
    return str(request.getfixturevalue(f"blank_{request.param}_url"))


def schema_differences(url: str) -> list[object]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection,
                opts={
                    "compare_type": True,
                    "compare_server_default": True,
                    "include_name": lambda name, kind, _parents: (
                        kind != "table" or not is_partition_name(name)
                    ),
                },
            )
            return list(compare_metadata(context, metadata))
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    engine = create_engine(url)
    try:
        # The inbox's monthly partitions (PostgreSQL) are the inbox, not tables of their own.
        return {name for name in inspect(engine).get_table_names() if not is_partition_name(name)}
    finally:
        engine.dispose()


def current_revision_is_head(database_url: str) -> bool:
    heads = set(ScriptDirectory.from_config(alembic_config(database_url)).get_heads())
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            current = set(MigrationContext.configure(connection).get_current_heads())
    finally:
        engine.dispose()
    return current == heads


def test_upgrade_brings_a_brand_new_database_to_head(blank_url: str) -> None:
    assert table_names(blank_url) == set()
    assert not current_revision_is_head(blank_url)

    upgrade(blank_url)

    assert current_revision_is_head(blank_url)
    assert table_names(blank_url) == set(metadata.tables) | {"alembic_version"}
    heads = ScriptDirectory.from_config(alembic_config(blank_url)).get_heads()
    assert len(heads) == 1, "migrations must not branch"


def test_migrated_schema_matches_the_models(blank_url: str) -> None:
    upgrade(blank_url)

    assert schema_differences(blank_url) == []


def test_upgrading_twice_is_harmless_and_keeps_data(blank_url: str) -> None:
    from models.database import make_engine

    upgrade(blank_url)
    engine = make_engine(blank_url)
    try:
        deliver(engine, event("organization.created", organization_data("org_1")))

        upgrade(blank_url)

        assert current_revision_is_head(blank_url)
        assert [row["id"] for row in organization_rows(engine)] == ["org_1"]
    finally:
        engine.dispose()
    assert schema_differences(blank_url) == []


def test_cli_db_upgrade_migrates_the_configured_database(blank_url: str) -> None:
    runner = CliRunner()
    for _ in range(2):
        result = runner.invoke(main, ["db", "upgrade"], env={"DATABASE_URL": blank_url})
        assert result.exit_code == 0, result.output
        assert "database at revision head" in result.output

    assert current_revision_is_head(blank_url)
    assert schema_differences(blank_url) == []


def test_0007_keeps_what_each_stored_membership_listed(blank_url: str) -> None:
    """Memberships stored before 0007 held what their newest event listed: the migration copies
    it into ``listed_permissions``/``listed_identifier``, the fallbacks of the derived columns,
    and takes the profile columns from the member's users row, as every write does since."""
    command.upgrade(alembic_config(blank_url), "0006")
    engine = create_engine(blank_url)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO organizations (id, name, public_metadata, created_at, updated_at, "
                "synced_at) VALUES ('org_1', 'Acme', '{}', 1, 1, '2026-01-01')"
            )
        )
        connection.execute(
            text(
                "INSERT INTO organization_memberships (id, organization_id, user_id, role, "
                "permissions, identifier, public_metadata, created_at, updated_at, synced_at) "
                "VALUES ('orgmem_1', 'org_1', 'user_1', 'org:member', '[\"org:a:read\"]', "
                "'+15550100', '{}', 1, 1, '2026-01-01')"
            )
        )
        connection.execute(
            text(
                "INSERT INTO users (id, username, first_name, public_metadata, created_at, "
                "updated_at, synced_at) VALUES ('user_1', 'jane', 'Jane', '{}', 1, 1, '2026-01-01')"
            )
        )

    command.upgrade(alembic_config(blank_url), "head")

    with engine.connect() as connection:
        row = connection.execute(
            text(
                "SELECT listed_permissions, listed_identifier, identifier, first_name "
                "FROM organization_memberships"
            )
        ).one()
    engine.dispose()
    listed = json.loads(row[0]) if isinstance(row[0], str) else row[0]
    assert (listed, row[1]) == (["org:a:read"], "+15550100")
    assert (row[2], row[3]) == ("jane", "Jane"), "the users row gives the profile from now on"
