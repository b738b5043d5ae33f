"""Counting a request can fail; it never changes the answer. Here the failure is real: under
gunicorn every worker process writes its counts to ``PROMETHEUS_MULTIPROC_DIR``, and a process
forked after that folder was deleted (a tmp cleaner, a redeploy) fails on its first count
(``FileNotFoundError`` from prometheus_client). Before, that failure came after the event was
queued and turned its ``202`` into a ``500``: Svix retried an event Redis already held."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import redis

from clerk_sync.core.settings import Settings
from tests.conftest import ROOT, queue_length, settings_env
from tests.ingress.conftest import ledger_ids

CHILD = """
import os, shutil, sys
from clerk_sync.core.settings import Settings
from ingress import create_app
from tests.factories import body_of, event, new_svix_id, organization_data, signed_headers

settings = Settings.from_env()
client = create_app(settings).test_client()

def post():
    body = body_of(event("organization.created", organization_data()))
    headers = signed_headers(settings.webhook_secrets[0], body, svix_id=new_svix_id())
    return client.post("/webhook/clerk", data=body, headers=headers).status_code

print("before", post(), flush=True)
shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"])
child = os.fork()
if child == 0:
    try:
        print("forked", post(), flush=True)
    finally:
        os._exit(0)
os.waitpid(child, 0)
"""


def test_an_accepted_event_is_answered_202_when_its_metrics_cannot_be_counted(
    settings: Settings, redis_client: redis.Redis[bytes], tmp_path: Path
) -> None:
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    result = subprocess.run(
        [sys.executable, "-c", CHILD],
        env={**settings_env(settings), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.split("\n")[:2] == ["before 202", "forked 202"], result.stderr
    assert "metrics not counted" in result.stderr, "the failure is logged"
    assert queue_length(redis_client, settings.queue_name) == 2
    assert len(ledger_ids(redis_client)) == 2
