"""Entry point for the ``celery`` command: ``celery -A workers.main beat`` (or ``flower``).

Run workers with ``clerk-sync worker``, which also prepares Prometheus' multi-process storage
(the ``celery`` command imports prometheus_client, through Flower, before this module runs).
Reading the environment here is this process's start-up; creating the app opens no connection.
"""

from clerk_sync.settings import Settings
from workers.app import create_celery_app

app = create_celery_app(Settings.from_env())
