"""clerk-sync: the core (``clerk_sync.core``), the Celery and kombu integration
(``clerk_sync.broker``) and the command line (``clerk_sync.cli``)."""
