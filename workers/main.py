"""Entry point for the ``celery`` command: ``celery -A workers.main beat`` (or ``flower``).

Run workers with ``clerk-sync worker``, which also prepares Prometheus' multi-process storage
(the ``celery`` command imports prometheus_client, through Flower, before this module runs).
Reading the environment here is this process's start-up; creating the app opens no connection.
"""

import sys

from clerk_sync.core.settings import Settings
from clerk_sync.core.versions import UntestedVersionError, check_versions
from workers.app import create_celery_app

settings = Settings.from_env()
try:
    check_versions(allow_untested=settings.allow_untested_versions)
except UntestedVersionError as error:
    sys.exit(f"Error: {error}")
app = create_celery_app(settings)
