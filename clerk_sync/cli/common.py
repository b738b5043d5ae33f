"""What every command shares: the settings, read once, with a clear error."""

from __future__ import annotations

from typing import Any

import click

from clerk_sync.core.settings import Settings, SettingsError
from clerk_sync.core.versions import UntestedVersionError, check_versions


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
