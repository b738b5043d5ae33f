"""deploy/postgres/init (the compose ``postgres`` service's init script) on the real local
PostgreSQL: it creates a role that is not a superuser and a database that role owns, is safe
to run twice, and the application migrates and works as that role."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import POSTGRES_ADMIN_URL, ROOT

SCRIPT = ROOT / "deploy" / "postgres" / "init" / "10-app-role.sh"


@pytest.fixture
def app_names() -> Iterator[tuple[str, str]]:
    """A role and a database name of this test's own, dropped afterwards."""
    suffix = uuid.uuid4().hex[:8]
    role, database = f"clerk_sync_role_{suffix}", f"clerk_sync_db_{suffix}"
    yield role, database
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
        connection.execute(text(f'DROP ROLE IF EXISTS "{role}"'))
    admin.dispose()


def run_script(role: str, database: str, password: str) -> subprocess.CompletedProcess[str]:
    admin = create_engine(POSTGRES_ADMIN_URL).url
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PGHOST": admin.host or "127.0.0.1",
        "PGPORT": str(admin.port or 5432),
        "POSTGRES_USER": admin.username or "postgres",
        "POSTGRES_DB": admin.database or "postgres",
        "APP_DB_USER": role,
        "APP_DB_PASSWORD": password,
        "APP_DB_NAME": database,
    }
    return subprocess.run(
        ["sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_init_script_creates_an_unprivileged_owner_the_application_runs_as(
    app_names: tuple[str, str],
) -> None:
    role, database = app_names
    password = "it's-a-test"
    for _ in range(2):
        result = run_script(role, database, password)
        assert result.returncode == 0, result.stderr
        assert password not in result.stdout + result.stderr

    admin = create_engine(POSTGRES_ADMIN_URL)
    with admin.connect() as connection:
        attributes = connection.execute(
            text(
                "SELECT rolsuper, rolcreatedb, rolcreaterole, rolcanlogin FROM pg_roles "
                "WHERE rolname = :role"
            ),
            {"role": role},
        ).one()
        owner = connection.execute(
            text("SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = :database"),
            {"database": database},
        ).scalar_one()
    admin.dispose()
    assert tuple(attributes) == (False, False, False, True)
    assert owner == role

    app_url = create_engine(POSTGRES_ADMIN_URL).url.set(username=role, database=database)
    url = app_url.render_as_string(hide_password=False)
    env = {**os.environ, "DATABASE_URL": url}
    upgrade = subprocess.run(
        [sys.executable, "-m", "clerk_sync", "db", "upgrade"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert upgrade.returncode == 0, upgrade.stderr
    app = create_engine(url)
    with app.connect() as connection:
        assert connection.execute(text("SELECT current_user")).scalar_one() == role
        tables = connection.execute(
            text("SELECT tableowner FROM pg_tables WHERE tablename = 'webhook_events'")
        ).scalar_one()
        assert tables == role
        assert connection.execute(text("SELECT count(*) FROM webhook_events")).scalar_one() == 0
    app.dispose()
