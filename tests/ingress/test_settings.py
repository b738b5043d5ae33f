"""CLERK_WEBHOOK_SECRET handling: a missing or malformed secret stops start-up with one line that
names the variable and never echoes the value."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from clerk_sync.cli import main
from clerk_sync.core.settings import Settings, SettingsError, parse_webhook_secrets
from ingress import create_app
from tests.conftest import MESSAGE_SECRET, SECOND_WEBHOOK_SECRET, WEBHOOK_SECRET

MALFORMED_SECRETS = [
    "abc",
    "whsec_!!!",
    "v1,xyz",
    "whsec_",
    "whsec_c2hvcnQ=",  # decodes to 5 bytes: too short to be a signing key
    "whsk_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    f"{WEBHOOK_SECRET} abc",
    f"{WEBHOOK_SECRET},whsec_!!!",
]


def leaked_parts(raw: str) -> list[str]:
    """The parts of a configured value that must not appear in an error message (the bare
    ``whsec_`` prefix is part of the help text, so it does not count)."""
    parts = [part for part in raw.replace(",", " ").split() if part]
    bodies = [part.removeprefix("whsec_") for part in parts]
    return [text for text in [raw, *parts, *bodies] if text and text != "whsec_"]


@pytest.mark.parametrize("env", [{}, {"CLERK_WEBHOOK_SECRET": ""}, {"CLERK_WEBHOOK_SECRET": " , "}])
def test_missing_secret_stops_create_app(env: dict[str, str]) -> None:
    settings = Settings.from_env(env)
    assert settings.webhook_secrets == ()
    with pytest.raises(SettingsError) as raised:
        create_app(settings)
    message = str(raised.value)
    assert "CLERK_WEBHOOK_SECRET" in message
    assert "\n" not in message


@pytest.mark.parametrize("raw", MALFORMED_SECRETS)
def test_malformed_secret_is_refused_without_echoing_it(raw: str) -> None:
    with pytest.raises(SettingsError) as raised:
        Settings.from_env({"CLERK_WEBHOOK_SECRET": raw})
    message = str(raised.value)
    assert "CLERK_WEBHOOK_SECRET" in message
    assert "\n" not in message
    for part in leaked_parts(raw):
        assert part not in message, part


@pytest.mark.parametrize(
    "secrets", [("abc",), ("whsec_",), ("",), ("whsec_!!!",), (WEBHOOK_SECRET, "v1,xyz")]
)
def test_create_app_refuses_malformed_secrets_given_directly(secrets: tuple[str, ...]) -> None:
    """Settings built in code (not from_env) get the same check before any request is served."""
    with pytest.raises(SettingsError) as raised:
        create_app(Settings(webhook_secrets=secrets))
    message = str(raised.value)
    assert "CLERK_WEBHOOK_SECRET" in message
    for secret in secrets:
        for part in leaked_parts(secret):
            assert part not in message, part


@pytest.mark.parametrize(
    "raw",
    [
        f"{WEBHOOK_SECRET} {SECOND_WEBHOOK_SECRET}",
        f"{WEBHOOK_SECRET},{SECOND_WEBHOOK_SECRET}",
        f"  {WEBHOOK_SECRET} ,\n {SECOND_WEBHOOK_SECRET}\t",
    ],
)
def test_several_secrets(raw: str) -> None:
    assert parse_webhook_secrets(raw) == (WEBHOOK_SECRET, SECOND_WEBHOOK_SECRET)
    settings = Settings.from_env(
        {"CLERK_WEBHOOK_SECRET": raw, "CLERK_SYNC_MESSAGE_SECRET": MESSAGE_SECRET}
    )
    assert settings.webhook_secrets == (WEBHOOK_SECRET, SECOND_WEBHOOK_SECRET)
    create_app(settings)


def test_settings_repr_hides_secrets() -> None:
    settings = Settings.from_env({"CLERK_WEBHOOK_SECRET": WEBHOOK_SECRET})
    assert WEBHOOK_SECRET.removeprefix("whsec_") not in repr(settings)


@pytest.mark.usefixtures("no_server")
@pytest.mark.parametrize("raw", [None, "", "   ", *MALFORMED_SECRETS])
def test_cli_ingress_refuses_to_start(raw: str | None) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["ingress"], env={"CLERK_WEBHOOK_SECRET": raw})
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), result.exception
    output = result.output.strip()
    assert output.startswith("Error: "), output
    assert "\n" not in output, output
    assert "Traceback" not in output
    assert "CLERK_WEBHOOK_SECRET" in output
    if raw and raw.strip():
        for part in leaked_parts(raw):
            assert part not in output, part
