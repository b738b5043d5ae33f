"""A throwaway Redis with Sentinel on loopback: a master, two replicas and three sentinels
(Debian's ``redis-server`` and ``redis-sentinel``), each on a free port in the test's tmp dir."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import wait_for
from tests.servers import free_port

MASTER_NAME = "clerk-sync-test"
DOWN_AFTER_MS = 1000
"""How long the sentinels wait on a silent master before they agree it is down."""


class SentinelGroup:
    """Redis servers (the first the master) and sentinels watching them as ``MASTER_NAME``."""

    def __init__(self, directory: Path, replicas: int = 2, sentinels: int = 3) -> None:
        self.directory = directory
        self.processes: dict[int, subprocess.Popen[bytes]] = {}
        self.server_ports = [free_port() for _ in range(1 + replicas)]
        self.sentinel_ports = [free_port() for _ in range(sentinels)]
        master = self.server_ports[0]
        for port in self.server_ports:
            replica_of = () if port == master else ("--replicaof", "127.0.0.1", str(master))
            self._start(port, ["redis-server", *self._server_options(port), *replica_of])
        quorum = sentinels // 2 + 1
        for port in self.sentinel_ports:
            config = directory / f"sentinel-{port}.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
                f"sentinel monitor {MASTER_NAME} 127.0.0.1 {master} {quorum}\n"
                f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}\n"
                f"sentinel failover-timeout {MASTER_NAME} 10000\n"
                f"sentinel parallel-syncs {MASTER_NAME} 2\n"
            )
            self._start(port, ["redis-sentinel", str(config)])
        for port in self.server_ports + self.sentinel_ports:
            wait_for(lambda port=port: self._pings(port), 10)
        self.wait_until_settled(master)

    @property
    def url(self) -> str:
        """The broker URL, in Celery's and kombu's form."""
        return ";".join(f"sentinel://127.0.0.1:{port}/0" for port in self.sentinel_ports)

    def master_port(self) -> int:
        """The master the sentinels name now."""
        with redis.Redis(port=self.sentinel_ports[0]) as sentinel:
            _host, port = sentinel.sentinel_get_master_addr_by_name(MASTER_NAME)
        return int(port)

    def client(self, port: int) -> redis.Redis[bytes]:
        return redis.Redis(port=port, socket_timeout=5)

    def kill(self, port: int) -> None:
        """SIGKILL one server: whatever it had not replicated is gone with it."""
        process = self.processes.pop(port)
        process.kill()
        process.wait(timeout=10)

    def wait_until_settled(self, master: int, timeout: float = 60) -> None:
        """Every sentinel names ``master``, knows the others, and sees every live server but
        the master as its replica, in sync (the state a failover needs)."""
        live_replicas = {port for port in self.server_ports if port in self.processes} - {master}

        def settled() -> bool:
            for port in self.sentinel_ports:
                with redis.Redis(port=port, decode_responses=True) as sentinel:
                    if int(sentinel.sentinel_get_master_addr_by_name(MASTER_NAME)[1]) != master:
                        return False
                    if (
                        len(sentinel.sentinel_sentinels(MASTER_NAME))
                        != len(self.sentinel_ports) - 1
                    ):
                        return False
                    replicas = {
                        int(replica["port"])
                        for replica in sentinel.sentinel_slaves(MASTER_NAME)
                        if not replica["is_odown"]
                        and not replica["is_sdown"]
                        and replica.get("master-link-status", "ok") == "ok"
                    }
                    if not live_replicas <= replicas:
                        return False
            with self.client(master) as client:
                replication = client.info("replication")
                online = {
                    int(value["port"])
                    for key, value in replication.items()
                    if key.startswith("slave")
                    and isinstance(value, dict)
                    and value.get("state") == "online"
                }
                # ... and acknowledging writes (a replica's first ACK follows its sync by ~1 s).
                client.set("clerk-sync-test:settled", 1)
                return live_replicas <= online and client.wait(len(live_replicas), 200) >= len(
                    live_replicas
                )

        wait_for(settled, timeout, 0.2)

    def stop(self) -> None:
        for process in self.processes.values():
            process.kill()
        for process in self.processes.values():
            process.wait(timeout=10)
        self.processes.clear()

    def log(self) -> str:
        return "\n".join(
            f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}"
            for path in sorted(self.directory.glob("*.log"))
        )

    def _server_options(self, port: int) -> list[str]:
        directory = self.directory / f"redis-{port}"
        directory.mkdir()
        return [
            *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(directory)),
            # A replica starts its first sync at once, not after Redis's default 5 s.
            *("--repl-diskless-sync-delay", "0"),
        ]

    def _start(self, port: int, command: list[str]) -> None:
        log = (self.directory / f"{Path(command[0]).name}-{port}.log").open("wb")
        self.processes[port] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)

    def _pings(self, port: int) -> bool:
        process = self.processes[port]
        assert process.poll() is None, self.log()
        try:
            with redis.Redis(port=port, socket_timeout=1) as client:
                return bool(client.ping())
        except redis.ConnectionError:
            return False


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    """A master, two replicas and three sentinels (quorum two), stopped after the test."""
    if shutil.which("redis-sentinel") is None:
        pytest.fail("redis-sentinel is missing: bash scripts/setup installs it")
    directory = tmp_path / "sentinel"
    directory.mkdir()
    group = SentinelGroup(directory)
    try:
        yield group
    finally:
        group.stop()
