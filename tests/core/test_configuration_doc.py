"""docs/configuration.md is what ``python -m clerk_sync.core.settings_doc`` prints, and every
variable ``Settings.from_env`` reads is documented on the field it sets."""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterator, Mapping

import pytest

from clerk_sync.core import settings as settings_module
from clerk_sync.core.settings import Settings
from clerk_sync.core.settings_doc import COMMAND, documented_fields, render
from tests.conftest import ROOT, WEBHOOK_SECRET

DOC = ROOT / "docs" / "configuration.md"

SAMPLES = {
    "CLERK_WEBHOOK_SECRET": WEBHOOK_SECRET,
    "CLERK_SYNC_MESSAGE_SECRET": "a-message-secret-of-at-least-32-characters",
    "DATABASE_URL": "sqlite:///elsewhere.db",
    "CELERY_BROKER_URL": "redis://127.0.0.1:6379/3",
    "CLERK_SECRET_KEY": "sk_test_abc",
    "CLERK_API_URL": "https://clerk.example",
    "CLERK_SYNC_LOG_FORMAT": "console",
    "CLERK_SYNC_LOG_LEVEL": "DEBUG",
    "CLERK_SYNC_ALLOW_UNTESTED_VERSIONS": "1",
    "CLERK_SYNC_ERASE_ON_USER_DELETED": "0",
}
"""A valid value other than the default, for the variables whose type alone does not give one."""


class RecordingEnvironment(Mapping[str, str]):
    """An empty environment that remembers every variable looked up in it."""

    def __init__(self) -> None:
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.read.add(key)
        return False

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def documented_variables() -> set[str]:
    return {setting.variable for _, setting in documented_fields()}


def test_the_doc_is_what_the_generator_prints() -> None:
    assert DOC.read_text() == render(), f"docs/configuration.md is out of date: run `{COMMAND}`"


def test_every_variable_from_env_reads_is_documented() -> None:
    environment = RecordingEnvironment()
    Settings.from_env(environment)
    assert environment.read, "from_env read nothing through the mapping it was given"
    assert environment.read - documented_variables() == set()


def test_every_variable_named_in_the_settings_module_is_documented() -> None:
    """Also a variable ``from_env`` would read only in some case the empty environment above
    does not reach."""
    source = inspect.getsource(settings_module)
    named = set(re.findall(r"\"((?:CLERK|CELERY|DATABASE)_[A-Z0-9_]+)\"", source))
    assert named - documented_variables() == set()


def test_every_documented_variable_is_read() -> None:
    environment = RecordingEnvironment()
    Settings.from_env(environment)
    assert documented_variables() - environment.read == set()


def test_each_variable_is_documented_once() -> None:
    variables = [setting.variable for _, setting in documented_fields()]
    assert len(variables) == len(set(variables))


def test_the_documented_defaults_are_what_an_empty_environment_gives() -> None:
    assert Settings.from_env({}) == Settings()


@pytest.mark.parametrize(
    ("name", "variable"), [(item.name, setting.variable) for item, setting in documented_fields()]
)
def test_each_variable_sets_the_field_that_documents_it(name: str, variable: str) -> None:
    default = getattr(Settings(), name)
    if variable in SAMPLES:
        value = SAMPLES[variable]
    elif default is None or isinstance(default, int | float):
        value = str((default or 0) + 1)
    else:
        value = f"{default}-other"
    configured = Settings.from_env({variable: value})
    assert getattr(configured, name) != default, f"{variable} did not change Settings.{name}"
    unchanged = {item.name for item, _ in documented_fields()} - {name}
    for other in unchanged:
        assert getattr(configured, other) == getattr(Settings(), other), (variable, other)
