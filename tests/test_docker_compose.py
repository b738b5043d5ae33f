"""docker-compose.yml validates, wires the services as intended, and refuses to render without
its required secrets; the Dockerfile copies every package the project installs.

Runs ``docker-compose config`` (Compose v1, Debian's ``docker-compose`` package), which needs no
Docker engine. The binary is a hard requirement: CI installs it with apt, so its absence is a
failure, not a skip.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = "docker-compose.yml"
REQUIRED = {
    "CLERK_WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "POSTGRES_PASSWORD": "compose-test-password",
    "FLOWER_BASIC_AUTH": "admin:compose-test",
}
SERVICES = {"redis", "postgres", "migrate", "ingress", "worker", "beat", "flower"}
APP_SERVICES = {"migrate", "ingress", "worker", "beat", "flower"}


def compose_binary() -> str:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail(
            "docker-compose is not installed; install it with "
            "`apt-get install -y docker-compose` (Compose v1 validates without a Docker engine)"
        )
    return binary


def run_config(
    env_dir: Path, variables: dict[str, str], *args: str
) -> subprocess.CompletedProcess[str]:
    """``docker-compose config`` with a clean environment: PATH, HOME and ``variables`` only,
    and an empty env file so a developer's ``.env`` cannot leak in."""
    env_file = env_dir / "empty.env"
    env_file.write_text("")
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(env_dir), **variables}
    return subprocess.run(
        [compose_binary(), "--env-file", str(env_file), "-f", COMPOSE_FILE, "config", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    result = run_config(tmp_path_factory.mktemp("compose"), REQUIRED)
    assert result.returncode == 0, result.stderr
    config = yaml.safe_load(result.stdout)
    assert isinstance(config, dict)
    return config


@pytest.fixture(scope="module")
def services(rendered: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = rendered["services"]
    return result


def test_config_lists_the_expected_services(tmp_path: Path, services: dict[str, Any]) -> None:
    assert set(services) == SERVICES
    listed = run_config(tmp_path, REQUIRED, "--services")
    assert listed.returncode == 0, listed.stderr
    assert set(listed.stdout.split()) == SERVICES


def test_redis_persists_with_append_only_file(
    rendered: dict[str, Any], services: dict[str, Any]
) -> None:
    redis = services["redis"]
    command = redis["command"]
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "everysec"
    assert any(volume.endswith(":/data") or ":/data:" in volume for volume in redis["volumes"])
    assert {"redis-data", "postgres-data"} <= set(rendered["volumes"])
    assert redis["healthcheck"]["test"][-2:] == ["redis-cli", "ping"]


def test_postgres_takes_its_password_from_the_environment(services: dict[str, Any]) -> None:
    postgres = services["postgres"]
    assert postgres["image"].startswith("postgres:16")
    assert postgres["environment"]["POSTGRES_PASSWORD"] == REQUIRED["POSTGRES_PASSWORD"]
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])


@pytest.mark.parametrize("service", ["ingress", "worker"])
def test_ingress_and_worker_start_after_migrations_succeed(
    services: dict[str, Any], service: str
) -> None:
    depends_on = services[service]["depends_on"]
    assert depends_on["migrate"]["condition"] == "service_completed_successfully"
    assert depends_on["redis"]["condition"] == "service_healthy"


def test_migrate_runs_once_after_postgres_is_healthy(services: dict[str, Any]) -> None:
    migrate = services["migrate"]
    assert migrate["command"] == ["db", "upgrade"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate["restart"] == "no"
    assert services["worker"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_app_services_share_one_image_and_environment(services: dict[str, Any]) -> None:
    images = {services[name]["image"] for name in APP_SERVICES}
    assert len(images) == 1
    for name in APP_SERVICES:
        environment = services[name]["environment"]
        assert environment["CELERY_BROKER_URL"] == "redis://redis:6379/0"
        assert environment["CLERK_WEBHOOK_SECRET"] == REQUIRED["CLERK_WEBHOOK_SECRET"]
        assert environment["DATABASE_URL"] == (
            f"postgresql+psycopg://clerk:{REQUIRED['POSTGRES_PASSWORD']}@postgres:5432/clerk_sync"
        )
        assert environment["CLERK_SYNC_WORKSPACE_METADATA_KEY"] == "convexWorkspaceId"


def test_long_running_services_restart_and_worker_drains(services: dict[str, Any]) -> None:
    for name in SERVICES - {"migrate"}:
        assert services[name]["restart"] == "unless-stopped", name
    assert services["worker"]["stop_grace_period"] == "60s"
    assert services["worker"]["command"][0] == "worker"
    ingress = services["ingress"]
    assert ingress["command"][:3] == ["ingress", "--bind", "0.0.0.0:8000"]
    assert "/readyz" in " ".join(ingress["healthcheck"]["test"])


def test_beat_and_flower_run_celery_against_workers_main(services: dict[str, Any]) -> None:
    beat = services["beat"]
    assert beat["entrypoint"] == ["celery"]
    assert beat["command"][:3] == ["-A", "workers.main", "beat"]
    assert beat["deploy"]["replicas"] == 1
    flower = services["flower"]
    assert flower["entrypoint"] == ["celery"]
    assert flower["command"][:3] == ["-A", "workers.main", "flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"] == REQUIRED["FLOWER_BASIC_AUTH"]


def _names_missing(stderr: str, variable: str) -> bool:
    # The `${VAR:?set VAR ...}` message follows a colon in both Compose v1 and v2 output; the
    # unrendered template (which v1 echoes, `:?set OTHER`) does not match.
    return re.search(rf":\s+set {variable}\b", stderr) is not None


@pytest.mark.parametrize("missing", sorted(REQUIRED))
@pytest.mark.parametrize("empty", [False, True], ids=["unset", "empty"])
def test_config_fails_without_a_required_variable(
    tmp_path: Path, missing: str, empty: bool
) -> None:
    variables = {name: value for name, value in REQUIRED.items() if name != missing}
    if empty:
        variables[missing] = ""
    result = run_config(tmp_path, variables)
    assert result.returncode != 0
    assert _names_missing(result.stderr, missing), result.stderr
    for other in set(REQUIRED) - {missing}:
        assert not _names_missing(result.stderr, other), result.stderr


def test_config_fails_with_no_variables_at_all(tmp_path: Path) -> None:
    result = run_config(tmp_path, {})
    assert result.returncode != 0
    assert result.stdout == ""
    assert any(_names_missing(result.stderr, name) for name in REQUIRED), result.stderr


def test_dockerfile_copies_every_installed_package() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    include = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"
    ]["find"]["include"]
    packages = {pattern.rstrip("*") for pattern in include}
    copied = set(re.findall(r"^COPY\s+(\w+)/", dockerfile, flags=re.MULTILINE))
    assert packages <= copied
    assert re.search(r"^COPY pyproject\.toml README\.md ", dockerfile, flags=re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \["clerk-sync"\]', dockerfile, flags=re.MULTILINE)
    assert re.search(r"^USER (?!root)", dockerfile, flags=re.MULTILINE)
