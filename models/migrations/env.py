"""Alembic environment: runs migrations against the URL set by ``models.migrate``."""

from __future__ import annotations

from alembic import context
from sqlalchemy import pool

from models.database import make_engine
from models.tables import metadata

config = context.config


def run_migrations() -> None:
    url = config.get_main_option("sqlalchemy.url")
    assert url, "models.migrate sets sqlalchemy.url"
    engine = make_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations()
