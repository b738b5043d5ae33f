"""``clerk-sync changes tail|purge``, run as commands: lines and JSON documents in id order,
``--since``, ``--table``, ``--follow`` woken by PostgreSQL's NOTIFY (and polling SQLite), and
``purge --older-than``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from sqlalchemy import Engine, delete, text

from models.tables import sync_changes
from tests.conftest import ROOT, wait_for
from tests.factories import event, organization_data, user_data
from tests.models.support import deliver
from tests.servers import stop_process


def command_env(engine: Engine) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLERK_", "DATABASE_URL"))}
    env["DATABASE_URL"] = engine.url.render_as_string(hide_password=False)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def clerk_sync(engine: Engine, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clerk_sync", *arguments],
        env=command_env(engine),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def feed_engine(engine: Engine) -> Engine:
    with engine.begin() as connection:
        connection.execute(delete(sync_changes))
    return engine


def test_tail_prints_changes_after_an_id_as_lines_or_json(feed_engine: Engine) -> None:
    engine = feed_engine
    organization = organization_data("org_1", name="Acme")
    deliver(engine, event("organization.created", organization), svix_id="msg_org")
    deliver(engine, event("user.created", user_data("user_1")), svix_id="msg_user")
    renamed = {**organization, "name": "Acme 2", "updated_at": organization["updated_at"] + 1}
    deliver(engine, event("organization.updated", renamed), svix_id="msg_renamed")

    result = clerk_sync(engine, "changes", "tail", "--since", "0", "--json")
    assert result.returncode == 0, result.stderr
    documents = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(d["table"], d["entity_id"], d["operation"], d["source"]) for d in documents] == [
        ("organizations", "org_1", "insert", "msg_org"),
        ("users", "user_1", "insert", "msg_user"),
        ("organizations", "org_1", "update", "msg_renamed"),
    ]
    assert documents[2]["columns"] == ["name", "updated_at"]
    assert documents[2]["values"]["name"] == "Acme 2"
    first = documents[0]["id"]

    later = clerk_sync(engine, "changes", "tail", "--since", str(first), "--table", "organizations")
    assert later.returncode == 0, later.stderr
    fields = [line.split("\t") for line in later.stdout.splitlines()]
    assert [(f[2], f[3], f[4], f[5], f[6]) for f in fields] == [
        ("update", "organizations", "org_1", "name,updated_at", "msg_renamed")
    ]


def test_tail_follow_prints_each_change_as_it_is_committed(
    feed_engine: Engine, tmp_path: Path
) -> None:
    engine = feed_engine
    deliver(engine, event("organization.created", organization_data("org_old")))
    output = tmp_path / "tail.out"
    with output.open("wb") as stream:
        process = subprocess.Popen(
            [sys.executable, "-m", "clerk_sync", "changes", "tail", "--follow", "--json"],
            env=command_env(engine),
            cwd=ROOT,
            stdout=stream,
            stderr=subprocess.STDOUT,
        )
    try:
        # Started after org_old: --follow without --since prints only what comes next.
        wait_for(lambda: listening(engine) or process.poll() is not None, 60, 0.1)
        assert process.poll() is None, output.read_text()
        deliver(engine, event("organization.created", organization_data("org_new")))
        lines = wait_for(lambda: output.read_text().splitlines(), 30, 0.05)
        assert [json.loads(line)["entity_id"] for line in lines] == ["org_new"]
    finally:
        stop_process(process)


def listening(engine: Engine) -> bool:
    """PostgreSQL: a session LISTENs on the feed's channel; SQLite: the command polls, and
    has had time to read where the feed ends."""
    if engine.dialect.name != "postgresql":
        threading.Event().wait(3)
        return True
    with engine.connect() as connection:
        return bool(
            connection.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND query ILIKE 'LISTEN clerk_sync_changes%'"
                )
            ).scalar_one()
        )


def test_purge_deletes_changes_older_than_asked(feed_engine: Engine) -> None:
    engine = feed_engine
    deliver(engine, event("organization.created", organization_data("org_1")))
    deliver(engine, event("organization.created", organization_data("org_2")))
    with engine.begin() as connection:
        connection.execute(
            text(
                "UPDATE sync_changes SET changed_at = '2020-01-01 00:00:00' "
                "WHERE id = (SELECT min(id) FROM sync_changes)"
            )
        )

    result = clerk_sync(engine, "changes", "purge", "--older-than", "30d", "--yes")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "Purged 1 change(s)"
    remaining = clerk_sync(engine, "changes", "tail", "--since", "0", "--json")
    assert [json.loads(line)["entity_id"] for line in remaining.stdout.splitlines()] == ["org_2"]
