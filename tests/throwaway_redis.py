"""Throwaway ``redis-server`` processes configured as a test needs (persistence, eviction
policy, renamed commands), so that the machine's own Redis is never reconfigured."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from tests.conftest import wait_for
from tests.servers import free_port

DURABLE = ("--appendonly", "yes", "--maxmemory-policy", "noeviction")
NOT_DURABLE = ("--appendonly", "no", "--maxmemory-policy", "allkeys-lru")
NO_CONFIG = ("--rename-command", "CONFIG", "")
"""A managed Redis: ``CONFIG`` disabled (unknown command)."""
NO_CONFIG_NOR_INFO = (*NO_CONFIG, "--rename-command", "INFO", "")

StartRedis = Callable[..., str]


@pytest.fixture
def start_redis(tmp_path: Path) -> Iterator[StartRedis]:
    """Start a ``redis-server`` on a free loopback port with the given options; returns its
    URL. Every one started is stopped after the test."""
    started: list[subprocess.Popen[bytes]] = []

    def start(*options: str) -> str:
        port = free_port()
        directory = tmp_path / f"redis-{port}"
        directory.mkdir()
        process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--dir",
                str(directory),
                *options,
            ],
            stdout=(directory / "redis.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        started.append(process)
        client: redis.Redis[bytes] = redis.Redis(port=port)

        def pings() -> bool:
            assert process.poll() is None, (directory / "redis.log").read_text()
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False

        wait_for(pings, 10)
        client.close()
        return f"redis://127.0.0.1:{port}/0"

    yield start
    for process in started:
        # Nothing in them is worth a clean shutdown (which can wait on an AOF rewrite).
        process.kill()
        process.wait(timeout=10)
