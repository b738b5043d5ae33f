"""How one setting is read from the environment and documented: parsers that raise
``SettingsError`` with a message naming the variable (never its value), and the ``documented``
field metadata from which ``docs/configuration.md`` is generated."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

DEFAULT_DATABASE_URL = "sqlite:///clerk-sync.db"
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
DEFAULT_CLERK_API_URL = "https://api.clerk.com"


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable, never its value."""


def parse_webhook_secrets(raw: str) -> tuple[str, ...]:
    """Split ``CLERK_WEBHOOK_SECRET`` into secrets and check each is a ``whsec_`` base64 key.

    Several secrets (separated by spaces or commas) let a rotation run with old and new valid.
    """
    secrets = tuple(part for part in re.split(r"[\s,]+", raw.strip()) if part)
    for position, secret in enumerate(secrets, start=1):
        check_webhook_secret(position, secret)
    return secrets


def check_webhook_secret(position: int, secret: str) -> None:
    """Raise ``SettingsError`` unless ``secret`` is a ``whsec_`` base64 key of 16+ bytes.

    Split out of ``parse_webhook_secrets`` so that ``Settings.require_webhook_secrets`` applies
    the same check to settings built in code: svix would otherwise accept ``"abc"`` as a key, or
    fail on ``"whsec_"`` with its own ``EmptyWebhookSecretError`` instead of a ``SettingsError``.
    """
    if not secret.startswith("whsec_"):
        raise SettingsError(
            f"CLERK_WEBHOOK_SECRET: secret #{position} must start with 'whsec_' "
            "(copy the Signing Secret from the Clerk dashboard endpoint page)"
        )
    body = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) < 16:
        raise SettingsError(
            f"CLERK_WEBHOOK_SECRET: secret #{position} is not a valid 'whsec_' base64 key"
        )


def parse_clerk_secret_key(raw: str) -> str:
    """``CLERK_SECRET_KEY`` (``sk_test_…``/``sk_live_…``), or "" when unset."""
    key = raw.strip()
    if key and (not key.startswith("sk_") or any(char.isspace() for char in key)):
        raise SettingsError(
            "CLERK_SECRET_KEY: must be a Clerk secret key starting with 'sk_' "
            "(Clerk dashboard → API keys)"
        )
    return key


def parse_clerk_api_url(raw: str) -> str:
    """``CLERK_API_URL`` without a trailing slash; the ``/v1/...`` paths are added to it."""
    url = raw.strip().rstrip("/") or DEFAULT_CLERK_API_URL
    if not re.match(r"^https?://[^/\s]+(/\S*)?$", url):
        raise SettingsError("CLERK_API_URL: expected an http(s) URL such as https://api.clerk.com")
    return url


def normalise_database_url(url: str) -> str:
    """Route plain PostgreSQL URLs to psycopg 3, the driver we install."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


def whole_number(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected a whole number, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{name}: must be at least {minimum}, got {value}")
    return value


def optional_whole_number(env: Mapping[str, str], name: str, minimum: int) -> int | None:
    """A whole number of at least ``minimum``, or None when unset or blank."""
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return None
    return whole_number(env, name, minimum, minimum)


def positive_number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}: expected a number, got {raw!r}") from None
    if value <= 0:
        raise SettingsError(f"{name}: must be greater than 0, got {value}")
    return value


Reader = Callable[[Mapping[str, str], str, Any], Any]
"""How a setting is read: (environment, its variable, the field's default) → the value; raises
``SettingsError`` naming the variable."""


def text(env: Mapping[str, str], name: str, default: Any) -> Any:
    """The value, stripped; the default when unset or blank."""
    return env.get(name, "").strip() or default


def whole(minimum: int = 0) -> Reader:
    """A whole number of at least ``minimum``."""
    return lambda env, name, default: whole_number(env, name, default, minimum)


def optional_whole(minimum: int) -> Reader:
    """A whole number of at least ``minimum``, or None when unset."""
    return lambda env, name, _default: optional_whole_number(env, name, minimum)


def positive(env: Mapping[str, str], name: str, default: Any) -> Any:
    """A number greater than 0."""
    return positive_number(env, name, default)


def switch(env: Mapping[str, str], name: str, default: Any) -> bool:
    """``1``/``true``/``yes``/``on`` or ``0``/``false``/``no``/``off``; the default when unset."""
    if env.get(name, "").strip() == "":
        return bool(default)
    return flag(env, name)


def parsed(parse: Callable[[str], Any]) -> Reader:
    """``parse`` of the raw value ("" when unset)."""
    return lambda env, name, _default: parse(env.get(name, ""))


def database_url(env: Mapping[str, str], name: str, default: Any) -> Any:
    """A SQLAlchemy URL, PostgreSQL's routed to psycopg 3."""
    return normalise_database_url(text(env, name, default))


def choice(options: Sequence[str], normalise: Callable[[str], str]) -> Reader:
    """One of ``options``, after ``normalise`` (case)."""

    def read(env: Mapping[str, str], name: str, default: Any) -> Any:
        value = normalise(env.get(name, "").strip()) or default
        if value not in options:
            expected = (
                " or ".join(repr(option) for option in options)
                if len(options) == 2
                else "one of " + ", ".join(options)
            )
            raise SettingsError(f"{name}: expected {expected}, got {value!r}")
        return value

    return read


@dataclass(frozen=True)
class Setting:
    """How an operator sets a ``Settings`` field: the environment variable ``from_env`` reads for
    it and how (``read``), what it means (one line of Markdown), and, where the field's default
    does not say it, the default as an operator sees it. ``docs/configuration.md`` is generated
    from these (``python -m clerk_sync.core.settings_doc``)."""

    variable: str
    meaning: str
    shown_default: str | None = None
    read: Reader = text


SETTING: Final = "clerk_sync.setting"
"""The key of a ``Setting`` in a ``Settings`` field's metadata."""


def documented(
    variable: str, meaning: str, shown_default: str | None = None, *, read: Reader = text
) -> dict[str, Setting]:
    """Field metadata naming a setting's environment variable, how it is read (``text`` unless
    said) and what it means (see ``Setting``)."""
    return {SETTING: Setting(variable, meaning, shown_default, read)}


def flag(env: Mapping[str, str], name: str) -> bool:
    value = env.get(name, "").strip().lower()
    if value in ("", "0", "false", "no", "off"):
        return False
    if value in ("1", "true", "yes", "on"):
        return True
    raise SettingsError(f"{name}: expected 1 or 0 (true or false), got {value!r}")


MIN_MESSAGE_SECRET_LENGTH: Final = 32


def parse_message_secrets(raw: str) -> tuple[str, ...]:
    """Split ``CLERK_SYNC_MESSAGE_SECRET`` into secrets (spaces or commas between them, the
    signing one first) and check each is long enough to be a key (e.g. ``openssl rand -hex
    32``)."""
    secrets = tuple(part for part in re.split(r"[\s,]+", raw.strip()) if part)
    for position, secret in enumerate(secrets, start=1):
        if len(secret) < MIN_MESSAGE_SECRET_LENGTH:
            raise SettingsError(
                f"CLERK_SYNC_MESSAGE_SECRET: secret #{position} is shorter than "
                f"{MIN_MESSAGE_SECRET_LENGTH} characters (make one with: openssl rand -hex 32)"
            )
    return secrets
