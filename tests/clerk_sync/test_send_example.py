"""``clerk-sync send-example``: signed example events to a running ingress, against a real
``clerk-sync dev`` (started as ``tests/clerk_sync/test_dev.py`` starts it), with no setup."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, select

from clerk_sync.cli import main
from clerk_sync.cli.dev import (
    DEFAULT_DATA_DIR,
    SECRET_FILE,
    development_secret,
    saved_secret,
    webhook_url,
)
from clerk_sync.cli.example_payloads import (
    EXAMPLE_TYPES,
    JANE_ID,
    JANE_MEMBERSHIP_ID,
    JOHN_ID,
    JOHN_MEMBERSHIP_ID,
    OLD_DOMAIN_ID,
    OLD_ORGANIZATION_ID,
    OLD_PERMISSION_ID,
    OLD_ROLE_ID,
    ORGANIZATION_ID,
    PERMISSION_IDS,
    ROLE_ID,
    WORKSPACE_ID,
    example_payloads,
)
from ingress.app import WEBHOOK_PATH
from models.events import APPLIED, RECEIVED
from models.tables import (
    erasure_requests,
    organization_domains,
    organization_invitations,
    organization_memberships,
    organization_permissions,
    organization_roles,
    organizations,
    tombstones,
    users,
)
from models.tables import webhook_events as events_table
from models.tombstones import (
    ORGANIZATION,
    ORGANIZATION_DOMAIN,
    ORGANIZATION_MEMBERSHIP,
    PERMISSION,
    ROLE,
    USER,
)
from tests.conftest import WEBHOOK_SECRET, wait_for
from tests.factories import BASE_TIME_MS
from tests.servers import answers, free_port
from workers.handlers import HANDLERS

LINE = re.compile(r"^(?P<type>\S+)\s+(?P<svix_id>msg_\w+)\s+(?P<status>\d{3})(?:\s+(?P<why>.*))?$")


def clean_environment() -> dict[str, str]:
    """The environment with no clerk-sync setting: what a newcomer starts from."""
    return {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CLERK_", "CELERY_", "DATABASE_URL"))
    }


@dataclass
class Dev:
    directory: Path
    port: int
    output: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{WEBHOOK_PATH}"

    def send_example(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        """``clerk-sync send-example`` run in the directory ``dev`` runs in."""
        return subprocess.run(
            [sys.executable, "-m", "clerk_sync", "send-example", f"--url={self.url}", *args],
            cwd=self.directory,
            env={**clean_environment(), **env},
            capture_output=True,
            text=True,
            timeout=60,
        )

    def rows(self, statement: Any) -> list[tuple[Any, ...]]:
        engine = create_engine(f"sqlite:///{self.directory / DEFAULT_DATA_DIR / 'clerk-sync.db'}")
        try:
            with engine.connect() as connection:
                return [tuple(row) for row in connection.execute(statement)]
        finally:
            engine.dispose()


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    """``clerk-sync dev`` with its defaults (but the port), in a directory of its own."""
    directory = tmp_path_factory.mktemp("dev")
    port = free_port()
    output = directory / "dev.log"
    with output.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "clerk_sync", "dev", f"--port={port}"],
            cwd=directory,
            env=clean_environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_for(lambda: "ready." in output.read_text(), 60)
            wait_for(lambda: answers(f"http://127.0.0.1:{port}/healthz"), 30)
            yield Dev(directory, port, output)
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=40)
    assert "Traceback" not in output.read_text()


def sent(result: subprocess.CompletedProcess[str]) -> list[dict[str, str]]:
    lines = [LINE.match(line) for line in result.stdout.splitlines()]
    assert all(lines), result.stdout
    return [line.groupdict() for line in lines if line]


@pytest.mark.worker
def test_every_example_is_accepted_applied_and_in_the_tables(dev: Dev) -> None:
    printed = dev.output.read_text()
    assert f"Try it, in another shell: clerk-sync send-example --url {dev.url}" in printed
    assert f"saved in {DEFAULT_DATA_DIR / SECRET_FILE}" in printed

    result = dev.send_example()

    assert result.returncode == 0, result.stderr
    lines = sent(result)
    assert [line["type"] for line in lines] == list(EXAMPLE_TYPES)
    assert {line["status"] for line in lines} == {"202"}
    svix_ids = {line["svix_id"] for line in lines}
    assert len(svix_ids) == len(EXAMPLE_TYPES)

    def finished() -> dict[str, str] | None:
        found = dict(
            dev.rows(
                select(events_table.c.svix_id, events_table.c.status).where(
                    events_table.c.svix_id.in_(svix_ids)
                )
            )
        )
        done = len(found) == len(svix_ids) and RECEIVED not in found.values()
        return found if done else None

    assert set(wait_for(finished, 60).values()) == {APPLIED}
    assert dev.rows(select(organizations.c.id, organizations.c.workspace_id)) == [
        (ORGANIZATION_ID, WORKSPACE_ID)
    ]
    assert dev.rows(
        select(users.c.id, users.c.username, users.c.last_name, users.c.primary_email_address)
    ) == [(JANE_ID, "jane", "Example", "jane.example@example.com")]
    assert dev.rows(
        select(
            organization_memberships.c.id,
            organization_memberships.c.organization_id,
            organization_memberships.c.user_id,
            organization_memberships.c.role,
        )
    ) == [(JANE_MEMBERSHIP_ID, ORGANIZATION_ID, JANE_ID, "org:admin")]
    assert set(dev.rows(select(tombstones.c.entity_type, tombstones.c.entity_id))) == {
        (ORGANIZATION_MEMBERSHIP, JOHN_MEMBERSHIP_ID),
        (USER, JOHN_ID),
        (ORGANIZATION, OLD_ORGANIZATION_ID),
        (ORGANIZATION_DOMAIN, OLD_DOMAIN_ID),
        (PERMISSION, OLD_PERMISSION_ID),
        (ROLE, OLD_ROLE_ID),
    }
    assert dev.rows(
        select(
            organization_roles.c.id, organization_roles.c.key, organization_roles.c.permission_ids
        )
    ) == [(ROLE_ID, "org:billing_manager", list(PERMISSION_IDS))]
    assert dev.rows(
        select(organization_permissions.c.key, organization_permissions.c.name).order_by(
            organization_permissions.c.id
        )
    ) == [
        ("org:reports:read", "Read and export reports"),
        ("org:invoices:manage", "Manage invoices"),
    ]
    assert dev.rows(
        select(organization_invitations.c.status, organization_invitations.c.user_id).order_by(
            organization_invitations.c.id
        )
    ) == [("accepted", JANE_ID), ("revoked", None)]
    assert dev.rows(
        select(
            organization_domains.c.name,
            organization_domains.c.enrollment_mode,
            organization_domains.c.verification_status,
            organization_domains.c.ownership_verification_status,
        )
    ) == [("example.com", "automatic_suggestion", "verified", "verified")]
    # dev's worker embeds beat: John's deletion is erased from the stored events soon.
    wait_for(lambda: dev.rows(select(erasure_requests.c.user_id)) == [], 60)
    john_left = dev.rows(select(events_table.c.payload).where(events_table.c.user_id == JOHN_ID))
    assert john_left
    assert not [payload for (payload,) in john_left if "Leaver" in payload]


@pytest.mark.worker
def test_the_types_named_are_sent_in_the_order_named(dev: Dev) -> None:
    result = dev.send_example("user.updated", "organization.updated")

    assert result.returncode == 0, result.stderr
    assert [(line["type"], line["status"]) for line in sent(result)] == [
        ("user.updated", "202"),
        ("organization.updated", "202"),
    ]


@pytest.mark.worker
def test_an_event_the_ingress_refuses_exits_non_zero_and_says_why(dev: Dev) -> None:
    result = dev.send_example("organization.created", CLERK_WEBHOOK_SECRET=WEBHOOK_SECRET)

    assert result.returncode == 1
    [line] = sent(result)
    assert (line["type"], line["status"], line["why"]) == (
        "organization.created",
        "400",
        "invalid_signature",
    )
    assert "1 of 1 not accepted" in result.stderr
    assert "set CLERK_WEBHOOK_SECRET" in result.stderr


def test_an_unknown_type_is_a_usage_error_listing_the_known_types() -> None:
    result = CliRunner().invoke(main, ["send-example", "organization.created", "org.renamed"])

    assert result.exit_code == 2
    assert "'org.renamed' is not one of" in result.output
    for event_type in EXAMPLE_TYPES:
        assert event_type in result.output


def test_no_ingress_listening_is_one_line_of_error(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}{WEBHOOK_PATH}"

    result = CliRunner().invoke(
        main, ["send-example", f"--url={url}"], env={"CLERK_WEBHOOK_SECRET": WEBHOOK_SECRET}
    )

    assert result.exit_code == 1
    assert f"cannot reach {url}" in result.output
    assert "Traceback" not in result.output


def test_without_a_secret_it_says_where_to_get_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    result = CliRunner().invoke(main, ["send-example"], env={"CLERK_WEBHOOK_SECRET": ""})

    assert result.exit_code == 1
    assert "no signing secret: set CLERK_WEBHOOK_SECRET" in result.output
    assert str(DEFAULT_DATA_DIR / SECRET_FILE) in result.output


def test_the_default_url_is_where_dev_listens() -> None:
    assert webhook_url() == f"http://127.0.0.1:8000{WEBHOOK_PATH}"
    send_example = main.commands["send-example"]
    dev_command = main.commands["dev"]
    defaults = {param.name: param.default for param in dev_command.params}
    url = next(param.default for param in send_example.params if param.name == "url")
    assert url == f"http://{defaults['host']}:{defaults['port']}{WEBHOOK_PATH}"


def test_dev_keeps_its_secret_for_later_runs_and_for_send_example(tmp_path: Path) -> None:
    assert saved_secret(tmp_path) is None

    secret, created = development_secret(tmp_path)

    assert created
    assert secret.startswith("whsec_")
    assert stat.S_IMODE((tmp_path / SECRET_FILE).stat().st_mode) == 0o600
    assert development_secret(tmp_path) == (secret, False)
    assert saved_secret(tmp_path) == secret


def test_a_damaged_secret_file_is_one_line_of_error(tmp_path: Path) -> None:
    (tmp_path / SECRET_FILE).write_text("not a secret\n")

    with pytest.raises(click.ClickException, match="delete it for a new one"):
        saved_secret(tmp_path)


def test_there_is_an_example_of_each_handled_type_and_nothing_else() -> None:
    assert sorted(EXAMPLE_TYPES) == sorted(HANDLERS)
    position = {event_type: index for index, event_type in enumerate(EXAMPLE_TYPES)}
    for membership_type in [t for t in EXAMPLE_TYPES if t.startswith("organizationMembership.")]:
        assert position[membership_type] > position["organization.created"]
        assert position[membership_type] > position["user.created"]


REFERENCE = Path(__file__).resolve().parent.parent / "reference" / "clerk-payloads"
"""Clerk's example payloads (copied from ../shared/reference/clerk-payloads/, fake ids)."""


def _keys(document: Any) -> Any:
    """The shape of a JSON document: its objects' keys, nested (metadata is free-form); lists
    by their first item."""
    if isinstance(document, dict):
        return {
            key: None if key.endswith("metadata") else _keys(value)
            for key, value in document.items()
        }
    if isinstance(document, list):
        return [_keys(document[0])] if document else []
    return None


def test_the_examples_are_shaped_like_clerk_payloads() -> None:
    """Every example has the keys, nested, of Clerk's own example of its type (where one is
    in the reference set; ``user.created``/``.updated`` are compared with ``user.deleted``'s
    envelope only); the builders' output is what the examples are made of."""
    payloads = example_payloads(BASE_TIME_MS, "convexWorkspaceId")
    compared = 0
    for event_type, payload in payloads.items():
        assert payload["type"] == event_type
        reference_file = REFERENCE / f"{event_type}.json"
        if not reference_file.exists():
            assert (
                payload.keys() == json.loads((REFERENCE / "user.deleted.json").read_text()).keys()
            )
            continue
        reference = json.loads(reference_file.read_text())
        assert _keys(payload) == _keys(reference), event_type
        compared += 1
    assert compared >= 6
    times = [payload["timestamp"] for payload in payloads.values()]
    assert times == sorted(times)
