"""End to end: svix-signed events over HTTP to the ingress under gunicorn, through real Redis, to a
real Celery worker process, into real PostgreSQL."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, select

from clerk_sync.core.settings import Settings
from models.tables import organization_memberships, organizations, webhook_events
from tests.conftest import ROOT, settings_env, wait_for
from tests.factories import (
    BASE_TIME_MS,
    body_of,
    deleted_organization_data,
    event,
    membership_data,
    new_svix_id,
    organization_data,
    signed_headers,
)
from tests.servers import answers, free_port, post

pytestmark = pytest.mark.worker


@pytest.fixture
def ingress_url(settings: Settings, tmp_path: Path) -> Iterator[str]:
    """``clerk-sync ingress`` under gunicorn, as production runs it."""
    port = free_port()
    log = (tmp_path / "ingress.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "clerk_sync", "ingress", f"--bind=127.0.0.1:{port}", "--workers=2"],
        env=settings_env(settings),
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"

    wait_for(lambda: answers(f"{url}/healthz") or process.poll() is not None, 30)
    assert process.poll() is None, (tmp_path / "ingress.log").read_text()
    yield url
    process.terminate()
    process.wait(timeout=20)
    log.close()


def post_event(url: str, secret: str, payload: dict[str, Any], svix_id: str) -> int:
    body = body_of(payload).encode()
    return post(f"{url}/webhook/clerk", body, signed_headers(secret, body, svix_id=svix_id))


def rows(engine: Engine, table: Any) -> list[dict[str, Any]]:
    with engine.connect() as connection:
        return [
            {
                key: value
                for key, value in row._mapping.items()
                if key not in ("synced_at", "synced_by")
            }
            for row in connection.execute(select(table).order_by(table.c[0].name))
        ]


def test_shuffled_duplicated_history_converges_end_to_end(
    settings: Settings,
    ingress_url: str,
    pg_engine: Engine,
    redis_client: redis.Redis[bytes],
    start_worker: Any,
) -> None:
    """A realistic history, delivered shuffled with Svix-style retries of the same svix-id, ends
    in the same rows as the history implies, and every event is recorded once."""
    t = BASE_TIME_MS
    acme_v1 = organization_data("org_acme", name="Acme", created_at=t, updated_at=t)
    acme_v2 = {
        **acme_v1,
        "name": "Acme Inc",
        "updated_at": t + 5_000,
        "public_metadata": {"convexWorkspaceId": "ws_1"},
    }
    gone = organization_data("org_gone", name="Gone", created_at=t, updated_at=t)
    owner = membership_data(
        acme_v1,
        membership_id="orgmem_owner",
        user_id="user_owner",
        role="org:admin",
        created_at=t + 1_000,
    )
    member = membership_data(
        acme_v1, membership_id="orgmem_member", user_id="user_member", created_at=t + 2_000
    )
    promoted = {**member, "organization": acme_v2, "role": "org:admin", "updated_at": t + 6_000}
    leaver = membership_data(
        gone, membership_id="orgmem_leaver", user_id="user_owner", created_at=t + 1_500
    )
    history = [
        event("organization.created", acme_v1),
        event("organizationMembership.created", owner),
        event("organizationMembership.created", member),
        event("organization.created", gone),
        event("organizationMembership.created", leaver),
        event("organization.updated", acme_v2),
        event("organizationMembership.updated", promoted),
        event("organization.deleted", deleted_organization_data("org_gone"), t + 7_000),
        event("session.created", {"object": "session", "id": "sess_1"}, t + 8_000),
    ]
    deliveries = [(new_svix_id(), payload) for payload in history]
    shuffled = deliveries + random.sample(deliveries, 4)
    random.shuffle(shuffled)
    secret = settings.webhook_secrets[0]
    assert [post_event(ingress_url, secret, payload, svix_id) for svix_id, payload in shuffled] == [
        202
    ] * len(shuffled)

    start_worker(settings)
    wait_for(
        lambda: (
            len(rows(pg_engine, webhook_events)) == len(history)
            and all(r["status"] != "received" for r in rows(pg_engine, webhook_events))
        )
    )
    wait_for(lambda: redis_client.zcard("clerk-sync:ledger:due") == 0, 10)

    assert rows(pg_engine, organizations) == [
        {
            "id": "org_acme",
            "name": "Acme Inc",
            "slug": "acme-test-org",
            "image_url": "https://img.clerk.com/fake-org-image",
            "workspace_id": "ws_1",
            "public_metadata": {"convexWorkspaceId": "ws_1"},
            "created_by": "user_2FAKEuser0000000000000000001",
            "max_allowed_memberships": 5,
            "created_at": t,
            "updated_at": t + 5_000,
        }
    ]
    memberships = {r["id"]: r for r in rows(pg_engine, organization_memberships)}
    assert set(memberships) == {"orgmem_owner", "orgmem_member"}
    assert memberships["orgmem_member"]["role"] == "org:admin"
    assert memberships["orgmem_member"]["updated_at"] == t + 6_000
    assert memberships["orgmem_owner"]["identifier"] == "jane.tester@example.com"
    statuses = {r["svix_id"]: r["status"] for r in rows(pg_engine, webhook_events)}
    assert statuses == {
        svix_id: "skipped" if payload["type"] == "session.created" else "applied"
        for svix_id, payload in deliveries
    }
    stored = {r["svix_id"]: r["payload"] for r in rows(pg_engine, webhook_events)}
    assert all(stored[svix_id] == body_of(payload) for svix_id, payload in deliveries)
    assert all(json.loads(stored[s])["type"] for s in stored)
