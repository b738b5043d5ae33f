"""``clerk-sync ingress`` at start-up: a CRITICAL line when the broker is not durable, a refusal
to start when ``CLERK_SYNC_REQUIRE_DURABLE_BROKER`` is set, and the metrics on a port of their
own (served by the gunicorn master for all its workers), not on the webhook port."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from clerk_sync.core.settings import Settings
from tests.conftest import ROOT, settings_env, wait_for
from tests.factories import body_of, event, organization_data, signed_headers
from tests.faults import IngressServer
from tests.servers import answers, free_port, metric_samples, post
from tests.throwaway_redis import DURABLE, NOT_DURABLE, StartRedis, start_redis

__all__ = ["start_redis"]


def log_lines(text: str) -> list[dict[str, Any]]:
    lines = []
    for line in text.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_refuses_to_start_when_durability_is_required_and_missing(
    settings: Settings, start_redis: StartRedis
) -> None:
    required = settings.with_overrides(
        broker_url=start_redis(*NOT_DURABLE), require_durable_broker=True
    )
    result = subprocess.run(
        [sys.executable, "-m", "clerk_sync", "ingress", f"--bind=127.0.0.1:{free_port()}"],
        env=settings_env(required),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert "CLERK_SYNC_REQUIRE_DURABLE_BROKER is set" in result.stderr
    assert "appendonly is off" in result.stderr
    critical = [line for line in log_lines(result.stderr) if line.get("level") == "critical"]
    assert len(critical) == 1, result.stderr
    assert critical[0]["durability"] == "not_durable"
    assert len(critical[0]["reasons"]) == 2
    assert required.broker_url not in result.stderr


def test_starts_with_a_critical_line_when_durability_is_not_required(
    settings: Settings, start_redis: StartRedis, tmp_path: Path
) -> None:
    server = IngressServer(
        settings.with_overrides(broker_url=start_redis(*NOT_DURABLE)), tmp_path / "ingress.log"
    )
    try:
        critical = [line for line in log_lines(server.log()) if line.get("level") == "critical"]
        assert [line["event"] for line in critical] == [
            "broker is not durable: an accepted event can be lost before it is applied"
        ]
    finally:
        server.stop()


def test_starts_when_durability_is_required_and_present(
    settings: Settings, start_redis: StartRedis, tmp_path: Path
) -> None:
    server = IngressServer(
        settings.with_overrides(broker_url=start_redis(*DURABLE), require_durable_broker=True),
        tmp_path / "ingress.log",
    )
    try:
        assert answers(f"{server.url}/readyz")
        assert "critical" not in server.log()
    finally:
        server.stop()


def scrape(port: int) -> dict[Any, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return metric_samples(response.read().decode())


def test_metrics_are_served_on_a_port_of_their_own(settings: Settings, tmp_path: Path) -> None:
    metrics_port = free_port()
    server = IngressServer(
        settings.with_overrides(ingress_metrics_port=metrics_port),
        tmp_path / "ingress.log",
        workers=2,
        threads=1,
    )
    try:
        wait_for(lambda: answers(f"http://127.0.0.1:{metrics_port}/metrics"), 10)
        accepted = ("clerk_sync_ingress_requests_total", frozenset({("outcome", "accepted")}))
        for _ in range(6):
            body = body_of(event("organization.created", organization_data()))
            headers = signed_headers(settings.webhook_secrets[0], body)
            assert post(f"{server.url}/webhook/clerk", body.encode(), headers) == 202
        wait_for(lambda: scrape(metrics_port).get(accepted) == 6, 10)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{server.url}/metrics", timeout=5)
        assert refused.value.code == 404
    finally:
        server.stop()
