"""What every command shares: the settings, read once, with a clear error; the database; a
progress bar."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click
from sqlalchemy import Engine

from clerk_sync.core.settings import Settings, SettingsError
from clerk_sync.core.versions import UntestedVersionError, check_versions
from models.database import make_engine


def load_settings(**overrides: Any) -> Settings:
    """The settings from the environment (with ``overrides``); a bad value is one line of error."""
    try:
        settings = Settings.from_env()
    except SettingsError as error:
        raise click.ClickException(str(error)) from None
    return settings.with_overrides(**overrides) if overrides else settings


def require_tested_versions(settings: Settings) -> None:
    """Stop with one line when celery, kombu, billiard, redis-py or hiredis is outside the
    tested range (``clerk_sync.core.versions``); with ``CLERK_SYNC_ALLOW_UNTESTED_VERSIONS``,
    say so and go on."""
    try:
        untested = check_versions(allow_untested=settings.allow_untested_versions)
    except UntestedVersionError as error:
        raise click.ClickException(str(error)) from None
    if untested:
        click.echo(f"warning: running with untested versions: {', '.join(untested)}", err=True)


@contextmanager
def database(settings: Settings) -> Iterator[Engine]:
    """An engine for ``DATABASE_URL`` for the command's duration."""
    engine = make_engine(settings.database_url, lock_timeout_ms=settings.db_lock_timeout_ms)
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def progress(length: int, label: str) -> Iterator[Callable[[int], None]]:
    """A click progress bar on a terminal (stderr, so stdout stays parseable); nothing else."""
    stream = sys.stderr
    if length > 0 and stream.isatty():
        with click.progressbar(length=length, label=label, file=stream) as bar:
            yield bar.update
    else:
        yield lambda _steps: None
