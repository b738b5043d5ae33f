"""The log settings every process reads at start-up: sane defaults, clear errors."""

from __future__ import annotations

import logging

import pytest

from clerk_sync.core.logs import configure_logging
from clerk_sync.core.settings import Settings, SettingsError


def test_log_level_defaults_to_info_and_accepts_any_case() -> None:
    assert Settings.from_env({}).log_level == "INFO"
    assert Settings.from_env({"CLERK_SYNC_LOG_LEVEL": " debug "}).log_level == "DEBUG"


def test_an_unknown_log_level_is_a_clear_error() -> None:
    with pytest.raises(SettingsError, match="CLERK_SYNC_LOG_LEVEL: expected one of DEBUG"):
        Settings.from_env({"CLERK_SYNC_LOG_LEVEL": "verbose"})


def test_the_level_reaches_the_root_logger() -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        configure_logging("json", Settings.from_env({"CLERK_SYNC_LOG_LEVEL": "WARNING"}).log_level)
        assert root.level == logging.WARNING
        assert not logging.getLogger("clerk_sync.ingress").isEnabledFor(logging.INFO)
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
