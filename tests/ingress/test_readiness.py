"""``/readyz`` says whether the broker is durable, and with
``CLERK_SYNC_REQUIRE_DURABLE_BROKER`` answers ``503`` unless it is known to be: against
throwaway ``redis-server`` processes, durable, not durable, and with ``CONFIG`` and ``INFO``
disabled (unknown)."""

from __future__ import annotations

from typing import Any

import pytest
from werkzeug.test import TestResponse

from clerk_sync.core.settings import Settings
from ingress import create_app
from tests.factories import signed_headers
from tests.ingress.conftest import WEBHOOK_PATH, org_body
from tests.throwaway_redis import (
    DURABLE,
    NO_CONFIG_NOR_INFO,
    NOT_DURABLE,
    StartRedis,
    start_redis,
)

__all__ = ["start_redis"]


def readyz(settings: Settings, broker_url: str, require: bool) -> TestResponse:
    app = create_app(settings.with_overrides(broker_url=broker_url, require_durable_broker=require))
    return app.test_client().get("/readyz")


def document(response: TestResponse) -> dict[str, Any]:
    body = response.get_json()
    assert isinstance(body, dict), response.get_data(as_text=True)
    return body


@pytest.mark.parametrize("require", [False, True], ids=["optional", "required"])
def test_a_durable_broker_is_ready(
    settings: Settings, start_redis: StartRedis, require: bool
) -> None:
    response = readyz(settings, start_redis(*DURABLE), require)
    assert response.status_code == 200
    body = document(response)
    assert body["status"] == "ready"
    assert body["durable"] is True
    assert body["durability"]["verdict"] == "durable"
    assert body["durability"]["reasons"] == []


def test_a_broker_that_is_not_durable_is_named_but_ready_when_not_required(
    settings: Settings, start_redis: StartRedis
) -> None:
    response = readyz(settings, start_redis(*NOT_DURABLE), require=False)
    assert response.status_code == 200
    body = document(response)
    assert body["status"] == "ready"
    assert body["durable"] is False
    assert body["durability"]["appendonly"] == "no"
    assert body["durability"]["maxmemory_policy"] == "allkeys-lru"
    assert len(body["durability"]["reasons"]) == 2


def test_a_broker_that_is_not_durable_is_not_ready_when_required(
    settings: Settings, start_redis: StartRedis
) -> None:
    response = readyz(settings, start_redis(*NOT_DURABLE), require=True)
    assert response.status_code == 503
    body = document(response)
    assert body["error"] == "broker_not_durable"
    assert body["durable"] is False
    assert any("appendonly is off" in reason for reason in body["durability"]["reasons"])


def test_unknown_durability_is_not_ready_when_required(
    settings: Settings, start_redis: StartRedis
) -> None:
    url = start_redis(*DURABLE, *NO_CONFIG_NOR_INFO)
    optional = readyz(settings, url, require=False)
    assert optional.status_code == 200
    assert document(optional)["durable"] is None
    assert document(optional)["durability"]["verdict"] == "unknown"
    required = readyz(settings, url, require=True)
    assert required.status_code == 503
    assert document(required)["durability"]["verdict"] == "unknown"


def test_the_webhook_still_accepts_on_a_broker_that_is_not_durable(
    settings: Settings, start_redis: StartRedis
) -> None:
    """Refusing to start is the guard; a running ingress does not drop events over it."""
    app = create_app(
        settings.with_overrides(broker_url=start_redis(*NOT_DURABLE), require_durable_broker=True)
    )
    body = org_body()
    response = app.test_client().post(
        WEBHOOK_PATH, data=body, headers=signed_headers(settings.webhook_secrets[0], body)
    )
    assert response.status_code == 202


def test_metrics_are_no_longer_served_on_the_webhook_port(settings: Settings) -> None:
    assert create_app(settings).test_client().get("/metrics").status_code == 404
