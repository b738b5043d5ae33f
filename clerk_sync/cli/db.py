"""``clerk-sync db upgrade``: the database schema (migrations in ``models.migrate``)."""

from __future__ import annotations

import click

from clerk_sync.cli.common import load_settings


@click.group()
def db() -> None:
    """Database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Bring the database at DATABASE_URL to the latest schema (safe to run repeatedly)."""
    from models.migrate import upgrade

    settings = load_settings()
    upgrade(settings.database_url, revision)
    click.echo(f"database at revision {revision}")
