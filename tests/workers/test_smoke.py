from tests.conftest import queue_length
from tests.factories import body_of, event, organization_data, signed_headers
from ingress import create_app
from tests.conftest import wait_for
from sqlalchemy import select
from models.tables import organizations

def test_smoke(settings, redis_client, pg_engine, start_worker):
    app = create_app(settings)
    client = app.test_client()
    body = body_of(event("organization.created", organization_data("org_1")))
    r = client.post("/webhook/clerk", data=body, headers=signed_headers(settings.webhook_secrets[0], body))
    assert r.status_code == 202
    assert queue_length(redis_client, settings.queue_name) == 1
    start_worker(settings)
    def rows():
        with pg_engine.connect() as c:
            return c.execute(select(organizations.c.id)).all()
    assert wait_for(rows) == [("org_1",)]
    assert redis_client.zcard("clerk-sync:ledger:due") == 0
