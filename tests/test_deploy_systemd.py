"""deploy/systemd: a unit per process for running clerk-sync on several hosts (issue #20). The
units run what the compose services run, the worker unit is a template and leaves the node name
to ``clerk-sync worker``, and the environment file sets only documented settings."""

from __future__ import annotations

import configparser
import shlex

from clerk_sync.core.settings_doc import documented_fields
from tests.conftest import ROOT

SYSTEMD = ROOT / "deploy" / "systemd"
ENV_FILE = "/etc/clerk-sync/clerk-sync.env"


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string((SYSTEMD / name).read_text())
    return parser


def command(name: str) -> list[str]:
    return shlex.split(unit(name)["Service"]["ExecStart"])


def test_each_process_has_a_unit_reading_the_shared_environment_file() -> None:
    names = sorted(path.name for path in SYSTEMD.glob("*.service"))
    assert names == [
        "clerk-sync-beat.service",
        "clerk-sync-ingress.service",
        "clerk-sync-worker@.service",
    ]
    for name in names:
        service = unit(name)["Service"]
        assert service["EnvironmentFile"] == ENV_FILE, name
        assert service["User"] == "clerk-sync", name
        assert service["Restart"] == "always", name
        assert unit(name)["Install"]["WantedBy"] == "multi-user.target", name


def test_the_units_run_what_the_compose_services_run() -> None:
    worker = command("clerk-sync-worker@.service")
    assert worker[0].endswith("/clerk-sync")
    assert worker[1] == "worker"
    assert not any(part.startswith(("-n", "--hostname")) for part in worker), (
        "the worker names itself clerk-sync@<host>-<pid>: several per host never collide"
    )
    assert unit("clerk-sync-worker@.service")["Service"]["KillSignal"] == "SIGTERM"
    beat = command("clerk-sync-beat.service")
    assert beat[0].endswith("/celery")
    assert beat[1:4] == ["-A", "workers.main", "beat"]
    assert any(part.startswith("--schedule=/var/lib/clerk-sync/") for part in beat)
    ingress = command("clerk-sync-ingress.service")
    assert ingress[0].endswith("/clerk-sync")
    assert ingress[1] == "ingress"


def test_the_environment_file_sets_documented_settings_only() -> None:
    documented = {setting.variable for _, setting in documented_fields()}
    assignments = [
        line.lstrip("# ").split("=", 1)[0]
        for line in (SYSTEMD / "clerk-sync.env").read_text().splitlines()
        if "=" in line and not line.startswith("# /") and line.lstrip("# ")[:1].isupper()
    ]
    assert {"DATABASE_URL", "CELERY_BROKER_URL", "CLERK_SYNC_MESSAGE_SECRET"} <= set(assignments)
    assert set(assignments) <= documented, set(assignments) - documented
