"""docker-compose.yml validates, wires the services as intended, and refuses to render without
its required secrets; it publishes only the webhook port, Redis has a password, a memory cap
without eviction and persistence, the application connects to PostgreSQL as a role of its own,
and the ingress requires a durable broker; the ``monitoring`` profile adds Prometheus and
Grafana on loopback; the Dockerfile copies every package the project installs.

Runs ``docker-compose config`` (Compose v1, Debian's ``docker-compose`` package), which needs no
Docker engine. The binary is a hard requirement: CI installs it with apt, so its absence is a
failure, not a skip.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from clerk_sync.core.durability import Verdict, check_broker
from clerk_sync.core.settings import Settings
from tests.conftest import wait_for
from tests.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = "docker-compose.yml"
REQUIRED = {
    "CLERK_WEBHOOK_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "POSTGRES_PASSWORD": "compose-test-password",
    "APP_DB_PASSWORD": "compose-test-app-password",
    "REDIS_PASSWORD": "compose-test-redis-password",
    "FLOWER_BASIC_AUTH": "admin:compose-test",
    "CLERK_SYNC_MESSAGE_SECRET": "compose-test-message-secret-of-32-characters",
}
CORE_SERVICES = {"redis", "postgres", "migrate", "ingress", "worker", "beat", "flower"}
MONITORING = {"prometheus", "grafana"}
SERVICES = CORE_SERVICES | MONITORING
APP_SERVICES = {"migrate", "ingress", "worker", "beat", "flower"}
WEBHOOK_PORT = 8000
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 - what a port published without an address listens on


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


def as_run(text: str) -> str:
    """What the container gets: ``config`` output keeps ``$$`` (a literal ``$``) escaped."""
    return text.replace("$$", "$")


def redis_server_options(services: dict[str, Any]) -> dict[str, str]:
    """The ``--name value`` options the redis service's shell passes to ``redis-server``."""
    command = services["redis"]["command"]
    assert command[:2] == ["sh", "-c"]
    words = shlex.split(as_run(command[2]))
    assert words[:2] == ["exec", "redis-server"]
    options = words[2:]
    assert len(options) % 2 == 0, options
    return {
        name.removeprefix("--"): value
        for name, value in zip(options[::2], options[1::2], strict=True)
    }


def test_redis_persists_with_append_only_file(
    rendered: dict[str, Any], services: dict[str, Any]
) -> None:
    redis = services["redis"]
    options = redis_server_options(services)
    assert options["appendonly"] == "yes"
    assert options["appendfsync"] == "everysec"
    assert any(volume.endswith(":/data") or ":/data:" in volume for volume in redis["volumes"])
    assert {"redis-data", "postgres-data"} <= set(rendered["volumes"])


def test_redis_has_a_password_a_memory_cap_and_never_evicts(services: dict[str, Any]) -> None:
    redis = services["redis"]
    options = redis_server_options(services)
    assert options["maxmemory-policy"] == "noeviction"
    # The shell expands these from the container's environment (``$$`` in the file), so the
    # password is not in the command, and comes from the operator's variable.
    assert options["requirepass"] == "$REDIS_PASSWORD"
    assert redis["environment"]["REDIS_PASSWORD"] == REQUIRED["REDIS_PASSWORD"]
    assert options["maxmemory"] == "$REDIS_MAXMEMORY"
    assert re.fullmatch(r"[1-9][0-9]*(mb|gb)", redis["environment"]["REDIS_MAXMEMORY"])
    healthcheck = " ".join(redis["healthcheck"]["test"])
    assert "REDISCLI_AUTH=" in healthcheck
    assert "redis-cli ping" in healthcheck
    for name in APP_SERVICES:
        broker = services[name]["environment"]["CELERY_BROKER_URL"]
        assert broker == f"redis://:{REQUIRED['REDIS_PASSWORD']}@redis:6379/0", name


def test_the_redis_command_runs_a_durable_redis_that_wants_the_password(
    services: dict[str, Any], tmp_path: Path
) -> None:
    """The service's own command line, run by a shell as the container would (on a free
    loopback port): clerk-sync judges it durable, and it refuses clients without the password."""
    redis_service = services["redis"]
    port = free_port()
    command = (
        as_run(redis_service["command"][2]) + f" --port {port} --bind 127.0.0.1 --dir {tmp_path}"
    )
    server = subprocess.Popen(
        ["sh", "-c", command],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **redis_service["environment"]},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"redis://:{REQUIRED['REDIS_PASSWORD']}@127.0.0.1:{port}/0"
    try:
        client: redis.Redis[bytes] = redis.Redis.from_url(url)
        wait_for(lambda: _pings(client), 10)
        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()
        assert client.config_get("maxmemory")["maxmemory"] == str(512 * 1024 * 1024)
        client.close()
        durability = check_broker(Settings(broker_url=url))
        assert durability.verdict is Verdict.DURABLE, durability.reasons
    finally:
        server.kill()
        server.wait(timeout=10)


def _pings(client: redis.Redis[bytes]) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def published_ports(service: dict[str, Any]) -> list[tuple[str, int]]:
    """(host address, published port) of each port a service publishes: Compose v1 renders a
    bare ``"8000:8000"`` in the long syntax and an address-bound one as a string."""
    published = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            published.append((port.get("host_ip", ALL_INTERFACES), int(port["published"])))
        else:
            parts = str(port).split("/")[0].split(":")
            host = parts[0] if len(parts) == 3 else ALL_INTERFACES
            published.append((host, int(parts[-2])))
    return published


def test_only_the_webhook_port_is_published_to_the_network(services: dict[str, Any]) -> None:
    public = {
        (name, port)
        for name, service in services.items()
        for host, port in published_ports(service)
        if host != "127.0.0.1"
    }
    assert public == {("ingress", WEBHOOK_PORT)}
    assert published_ports(services["flower"]) == [("127.0.0.1", 5555)]
    for name in ("redis", "postgres", "worker", "beat", "migrate"):
        assert published_ports(services[name]) == [], name
    for name in MONITORING:
        assert all(host == "127.0.0.1" for host, _ in published_ports(services[name])), name


def test_metrics_ports_are_on_the_compose_network_only(services: dict[str, Any]) -> None:
    ingress, worker = services["ingress"], services["worker"]
    assert ingress["environment"]["CLERK_SYNC_INGRESS_METRICS_PORT"] == "9807"
    assert worker["environment"]["CLERK_SYNC_WORKER_METRICS_PORT"] == "9808"
    assert ingress["expose"] == ["9807"]
    assert worker["expose"] == ["9808"]
    assert [port for _, port in published_ports(ingress)] == [WEBHOOK_PORT]


def test_the_ingress_requires_a_durable_broker(services: dict[str, Any]) -> None:
    for name in APP_SERVICES:
        assert services[name]["environment"]["CLERK_SYNC_REQUIRE_DURABLE_BROKER"] == "1", name


def test_the_application_connects_as_a_role_of_its_own(services: dict[str, Any]) -> None:
    postgres = services["postgres"]
    environment = postgres["environment"]
    assert environment["POSTGRES_USER"] == "postgres"
    assert environment["APP_DB_USER"] == "clerk_sync"
    assert environment["APP_DB_USER"] != environment["POSTGRES_USER"]
    assert environment["APP_DB_PASSWORD"] == REQUIRED["APP_DB_PASSWORD"]
    assert environment["APP_DB_PASSWORD"] != environment["POSTGRES_PASSWORD"]
    init = [volume for volume in postgres["volumes"] if "/docker-entrypoint-initdb.d" in volume]
    assert len(init) == 1
    source = Path(init[0].split(":")[0])
    assert source == ROOT / "deploy" / "postgres" / "init"
    scripts = sorted(source.glob("*.sh"))
    assert scripts, "no init script creates the application's role"
    assert all(os.access(script, os.X_OK) for script in scripts)
    for name in APP_SERVICES:
        url = services[name]["environment"]["DATABASE_URL"]
        assert url.startswith(
            f"postgresql+psycopg://clerk_sync:{REQUIRED['APP_DB_PASSWORD']}@postgres:5432/"
        ), name
        assert REQUIRED["POSTGRES_PASSWORD"] not in url


def test_monitoring_is_an_optional_profile_provisioned_from_the_repository(
    services: dict[str, Any],
) -> None:
    for name in MONITORING:
        assert services[name]["profiles"] == ["monitoring"], name
    for name in CORE_SERVICES:
        assert "profiles" not in services[name], name
    mounts = {
        volume.split(":")[1]: Path(volume.split(":")[0])
        for name in MONITORING
        for volume in services[name]["volumes"]
        if volume.startswith("/")
    }
    assert mounts["/etc/prometheus"] == ROOT / "deploy" / "monitoring" / "prometheus"
    assert (mounts["/etc/prometheus"] / "prometheus.yml").is_file()
    provisioning = mounts["/etc/grafana/provisioning"]
    assert (provisioning / "datasources").is_dir()
    assert (provisioning / "dashboards").is_dir()
    assert list(mounts["/var/lib/grafana/dashboards"].glob("*.json"))
    grafana = services["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    assert grafana["GF_AUTH_DISABLE_LOGIN_FORM"] == "true"
    assert grafana["GF_AUTH_BASIC_ENABLED"] == "false"


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
        assert environment["CLERK_WEBHOOK_SECRET"] == REQUIRED["CLERK_WEBHOOK_SECRET"]
        assert environment["DATABASE_URL"] == (
            f"postgresql+psycopg://clerk_sync:{REQUIRED['APP_DB_PASSWORD']}"
            "@postgres:5432/clerk_sync"
        )
        assert environment["CLERK_SYNC_WORKSPACE_METADATA_KEY"] == "convexWorkspaceId"


def test_the_message_secret_reaches_every_signer_and_not_flower(services: dict[str, Any]) -> None:
    """Ingress, worker (retries, sweeper) and beat sign task messages with the secret; Flower,
    which can send tasks, is not given it (what it sends is refused as forged)."""
    secret = REQUIRED["CLERK_SYNC_MESSAGE_SECRET"]
    for name in ("ingress", "worker", "beat", "migrate"):
        assert services[name]["environment"]["CLERK_SYNC_MESSAGE_SECRET"] == secret, name
    assert services["flower"]["environment"]["CLERK_SYNC_MESSAGE_SECRET"] == ""


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


def test_workers_and_beats_scale_with_replicas(tmp_path: Path, services: dict[str, Any]) -> None:
    """One worker and one beat by default; WORKER_REPLICAS and BEAT_REPLICAS run more (issue #20:
    several hosts). Nothing pins a worker's node name or container name, so replicas differ."""
    assert services["worker"]["deploy"]["replicas"] == 1
    result = run_config(tmp_path, {**REQUIRED, "WORKER_REPLICAS": "3", "BEAT_REPLICAS": "2"})
    assert result.returncode == 0, result.stderr
    scaled = yaml.safe_load(result.stdout)["services"]
    assert scaled["worker"]["deploy"]["replicas"] == 3
    assert scaled["beat"]["deploy"]["replicas"] == 2
    for name in ("worker", "beat"):
        assert "container_name" not in scaled[name], name
        assert "hostname" not in scaled[name], name
    assert not any(
        option.startswith(("-n", "--hostname")) for option in scaled["worker"]["command"]
    ), "clerk-sync worker names itself clerk-sync@<host>-<pid>"


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
