"""Celery workers: consume queued events and apply them to the database through ``models``."""
