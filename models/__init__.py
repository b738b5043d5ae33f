"""Tables and mutations. Knows SQLAlchemy and the Clerk data model; not Flask, not Celery."""
