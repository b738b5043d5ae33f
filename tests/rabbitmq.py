"""RabbitMQ for the tests: the machine's broker (``TEST_AMQP_URL``, a virtual host of the tests'
own is best), each test on a queue of its own, deleted afterwards; and ``RabbitServer``, a
``rabbitmq-server`` node of a test's own (its own node name, ports and data directory) that can
be killed and started again without touching the machine's broker, which others use."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from kombu.connection import Connection

from clerk_sync.core.rabbitmq import task_queue
from clerk_sync.core.settings import Settings
from tests.conftest import wait_for
from tests.servers import free_port

AMQP_URL = os.environ.get("TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
RABBITMQCTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"
"""Not Debian's /usr/sbin wrappers, which run as the rabbitmq user (with its Erlang cookie)."""


def queue_depth(settings: Settings) -> tuple[int, int]:
    """(messages ready, consumers) of the test queue, by a passive declare."""
    with Connection(settings.broker_url, connect_timeout=5) as connection:  # type: ignore[no-untyped-call]
        _name, ready, consumers = connection.default_channel.queue_declare(
            queue=settings.queue_name, passive=True
        )
    return int(ready), int(consumers)


def delete_queue(settings: Settings) -> None:
    try:
        with Connection(settings.broker_url, connect_timeout=5) as connection:  # type: ignore[no-untyped-call]
            task_queue(settings)(connection.default_channel).delete()  # type: ignore[no-untyped-call]
    except Exception:  # noqa: BLE001, S110 - a broker a test killed has nothing to clean up
        pass


@pytest.fixture
def amqp_settings(settings: Settings) -> Iterator[Settings]:
    """The test settings on RabbitMQ: the machine's broker, a queue of the test's own."""
    amqp = replace(settings, broker_url=AMQP_URL)
    yield amqp
    delete_queue(amqp)


def needs_rabbitmq_server() -> None:
    if not Path(RABBITMQ_SERVER).exists():
        pytest.skip("rabbitmq-server is not installed (apt-get install rabbitmq-server)")


class RabbitServer:
    """A RabbitMQ node of a test's own on loopback: ``kill`` (SIGKILL, no clean shutdown) and
    ``start`` again on the same ports and data directory, as a crashed broker restarts."""

    def __init__(self, directory: Path) -> None:
        needs_rabbitmq_server()
        self.directory = directory
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"clerk-sync-test-{self.port}@localhost"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        (directory / "enabled_plugins").write_text("[].\n")

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def _env(self) -> dict[str, str]:
        return {
            **os.environ,
            "HOME": str(self.directory),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(self.directory / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.directory / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.directory / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(self.directory / "rabbitmq"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(self.directory / "advanced.config"),
            "RABBITMQ_PID_FILE": str(self.directory / "rabbitmq.pid"),
        }

    def start(self) -> None:
        assert self.process is None or self.process.poll() is not None
        self.starts += 1
        with (self.directory / f"server-{self.starts}.log").open("wb") as log:
            self.process = subprocess.Popen(
                [RABBITMQ_SERVER],
                env=self._env(),
                cwd=self.directory,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self._answers, 90, 0.25)

    def _answers(self) -> bool:
        assert self.process is not None
        assert self.process.poll() is None, self.log()
        try:
            with Connection(self.url, connect_timeout=1) as connection:  # type: ignore[no-untyped-call]
                connection.connect()
        except Exception:  # noqa: BLE001 - not up yet
            return False
        return True

    def ctl(self, *arguments: str) -> str:
        """``rabbitmqctl`` against this node."""
        return subprocess.run(
            [RABBITMQCTL, "-n", self.node, *arguments],
            env=self._env(),
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout

    def kill(self) -> None:
        """SIGKILL to the node's whole process group: no clean shutdown, every connection
        dropped at once."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)
            time.sleep(0.5)  # epmd notices the node is gone

    def log(self) -> str:
        logs = sorted(self.directory.glob("server-*.log"))
        return logs[-1].read_text(errors="replace") if logs else ""


@pytest.fixture
def rabbit_server(tmp_path: Path) -> Iterator[RabbitServer]:
    """A RabbitMQ node of the test's own, started; killed and removed after the test."""
    directory = tmp_path / "rabbitmq"
    directory.mkdir()
    server = RabbitServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.kill()
        shutil.rmtree(directory / "mnesia", ignore_errors=True)
