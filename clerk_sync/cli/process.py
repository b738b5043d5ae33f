"""Process-wide set-up that must happen before other imports."""

from __future__ import annotations

import os
import tempfile


def use_multiprocess_metrics() -> None:
    """Let every pre-forked process (gunicorn workers, Celery's pool) count into one Prometheus
    view. Must run before prometheus_client is imported: it picks its storage at import time."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="clerk-sync-metrics-")
