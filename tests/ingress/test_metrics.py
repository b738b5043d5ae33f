"""The ingress's metrics: requests by outcome, accepted events by type, and request latency
(read from the app's own registry; ``test_metrics_port.py`` scrapes them over HTTP)."""

from __future__ import annotations

from flask.testing import FlaskClient

from clerk_sync.core.settings import Settings
from ingress import create_app
from ingress.metrics import IngressMetrics
from tests.conftest import SECOND_WEBHOOK_SECRET
from tests.factories import signed_headers
from tests.ingress.conftest import CLOSED_BROKER_URL, Post, org_body
from tests.servers import Samples, metric_samples


def samples(client: FlaskClient) -> Samples:
    metrics = client.application.extensions["clerk_sync.metrics"]
    assert isinstance(metrics, IngressMetrics)
    return metric_samples(metrics.exposition().decode())


def requests_total(outcome: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return ("clerk_sync_ingress_requests_total", frozenset({("outcome", outcome)}))


def test_counts_each_outcome_and_event_type(
    client: FlaskClient, post: Post, post_signed: Post
) -> None:
    before = samples(client)
    assert before[requests_total("accepted")] == 0

    post_signed(org_body("organization.created"))
    post_signed(org_body("organization.updated"))
    post_signed(org_body("organization.updated"))
    post_signed("[]")
    post(org_body(), {"svix-id": "msg_x", "svix-timestamp": "1", "svix-signature": "v1,AAAA"})
    post(org_body(), {})
    post_signed(org_body(), secret=SECOND_WEBHOOK_SECRET)

    after = samples(client)
    assert after[requests_total("accepted")] == 3
    assert after[requests_total("malformed")] == 1
    assert after[requests_total("stale")] == 1
    assert after[requests_total("missing_headers")] == 1
    assert after[requests_total("bad_signature")] == 1
    updated = (
        "clerk_sync_ingress_events_total",
        frozenset({("event_type", "organization.updated")}),
    )
    assert after[updated] == 2
    assert after[("clerk_sync_ingress_request_duration_seconds_count", frozenset())] == 7


def test_counts_broker_outages(settings: Settings) -> None:
    client = create_app(settings.with_overrides(broker_url=CLOSED_BROKER_URL)).test_client()
    body = org_body()
    response = client.post(
        "/webhook/clerk", data=body, headers=signed_headers(settings.webhook_secrets[0], body)
    )
    assert response.status_code == 503
    assert samples(client)[requests_total("broker_down")] == 1
