"""``clerk-sync dev``: the whole job on one machine with no external services."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from models.tables import organizations, webhook_events
from tests.conftest import wait_for
from tests.factories import body_of, event, organization_data, signed_headers
from tests.servers import answers, free_port, post

pytestmark = pytest.mark.worker


def test_dev_applies_a_signed_webhook_with_sqlite_and_a_filesystem_broker(tmp_path: Path) -> None:
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CLERK_", "CELERY_", "DATABASE_URL"))
    }
    output = tmp_path / "dev.log"
    with output.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "clerk_sync", "dev", f"--port={port}", "--data-dir=state"],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            secret = wait_for(
                lambda: re.search(r"signing secret: (whsec_\S+)", output.read_text()), 60
            ).group(1)
            wait_for(lambda: "ready." in output.read_text(), 60)
            body = body_of(event("organization.created", organization_data("org_dev", name="Dev")))
            base = f"http://127.0.0.1:{port}"
            wait_for(lambda: answers(f"{base}/healthz"), 30)
            assert post(f"{base}/webhook/clerk", body.encode(), signed_headers(secret, body)) == 202

            engine = create_engine(f"sqlite:///{tmp_path / 'state' / 'clerk-sync.db'}")

            def applied() -> list[str]:
                with engine.connect() as connection:
                    return list(connection.execute(select(organizations.c.name)).scalars())

            assert wait_for(applied, 30) == ["Dev"]
            with engine.connect() as connection:
                assert connection.execute(select(webhook_events.c.status)).scalar_one() == "applied"
            engine.dispose()
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=40)
    assert "Traceback" not in output.read_text()
