"""The application's side of the change feed's fan-out, for ``test_change_fanout``: its own
Celery app and task (``application.on_change``), run by its own worker process
(``celery -A tests.workers.change_application worker``), recording each change it receives
(with the task id) in a Redis list the test reads."""

from __future__ import annotations

import json
import os
from typing import Any

import redis
from celery import Celery

BROKER_URL = os.environ.get("CHANGE_APPLICATION_BROKER", "redis://127.0.0.1:6379/11")
RECEIVED_KEY = "application:changes"
TASK = "application.on_change"

app = Celery("application", broker=BROKER_URL)
app.conf.update(task_serializer="json", accept_content=["json"])


@app.task(name=TASK, bind=True)  # type: ignore[untyped-decorator]
def on_change(self: Any, change: dict[str, Any]) -> None:
    client = redis.Redis.from_url(BROKER_URL)
    client.rpush(RECEIVED_KEY, json.dumps({"task_id": self.request.id, "change": change}))
    client.close()
