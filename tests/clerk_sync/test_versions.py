"""Pinned dependencies and the start-up version check: the worker and the ingress start only with
the minor versions of celery, kombu, billiard, redis-py and hiredis the tests ran against, and
the ranges, the lock file and the check agree."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

from clerk_sync.core.settings import Settings, SettingsError
from clerk_sync.core.versions import TESTED, UntestedVersionError, check_versions
from tests.conftest import ROOT, settings_env

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirements() -> dict[str, Requirement]:
    project = PYPROJECT["project"]
    declared = [*project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        declared.extend(extra)
    return {Requirement(text).name.lower(): Requirement(text) for text in declared}


def locked() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_every_dependency_is_a_compatible_release_range_the_lock_file_satisfies() -> None:
    pins = locked()
    for name, requirement in requirements().items():
        specifiers = list(requirement.specifier)
        assert [spec.operator for spec in specifiers] == ["~="], f"{name}: {requirement}"
        assert pins.get(name) in requirement.specifier, f"{name} {pins.get(name)} vs {requirement}"


def test_the_start_up_check_holds_the_minor_versions_of_the_ranges() -> None:
    declared = requirements()
    for name, tested in TESTED.items():
        (spec,) = declared[name].specifier
        assert ".".join(spec.version.split(".")[:2]) == tested, name
        assert len(spec.version.split(".")) == 3, f"{name}: ~= with a patch release pins the minor"
        assert Version(locked()[name]).release[:2] == Version(tested).release[:2]


def test_the_installed_libraries_are_the_tested_ones() -> None:
    assert check_versions(allow_untested=False) == []


def test_an_untested_minor_version_stops_start_up_with_one_line() -> None:
    installed = {"celery": "5.7.3", "kombu": "5.8.0", "billiard": "4.3.2", "redis": "8.2.1"}

    def version_of(name: str) -> str:
        return installed.get(name, "3.5.0")

    with pytest.raises(UntestedVersionError) as refused:
        check_versions(allow_untested=False, installed=version_of)
    message = str(refused.value)
    assert "\n" not in message
    assert "kombu 5.8.0 (tested: 5.7.*)" in message
    assert "celery" not in message.split(";")[0], "a patch release is within the tested range"
    assert "CLERK_SYNC_ALLOW_UNTESTED_VERSIONS" in message
    assert check_versions(allow_untested=True, installed=version_of) == [
        "kombu 5.8.0 (tested: 5.7.*)"
    ]


def test_the_override_is_a_flag() -> None:
    assert Settings.from_env({"CLERK_SYNC_ALLOW_UNTESTED_VERSIONS": "1"}).allow_untested_versions
    assert not Settings.from_env({}).allow_untested_versions
    with pytest.raises(SettingsError, match="CLERK_SYNC_ALLOW_UNTESTED_VERSIONS"):
        Settings.from_env({"CLERK_SYNC_ALLOW_UNTESTED_VERSIONS": "maybe"})


def fake_distribution(folder: Path, name: str, version: str) -> None:
    """A distribution's metadata only, found before the real one on ``sys.path``."""
    info = folder / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


@pytest.mark.parametrize(
    "command",
    [
        ["-m", "clerk_sync", "worker"],
        ["-m", "clerk_sync", "ingress", "--bind", "127.0.0.1:0"],
        ["-m", "celery", "-A", "workers.main", "beat"],
    ],
)
def test_a_process_with_an_untested_kombu_refuses_to_start(
    command: list[str], settings: Settings, tmp_path: Path
) -> None:
    fake_distribution(tmp_path, "kombu", "6.0.0")
    env = {
        **settings_env(settings),
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
    }
    refused = subprocess.run(
        [sys.executable, *command], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert refused.returncode != 0
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, refused.stderr
    assert "kombu 6.0.0 (tested: 5.7.*)" in lines[0]

    # With the override the same process goes on (``celery report`` loads the app and exits).
    allowed = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "workers.main", "report"],
        env={**env, "CLERK_SYNC_ALLOW_UNTESTED_VERSIONS": "1"},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert allowed.returncode == 0, allowed.stderr
    assert "software -> celery" in allowed.stdout
