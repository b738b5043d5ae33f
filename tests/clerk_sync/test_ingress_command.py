"""``clerk-sync ingress``: every gunicorn worker listens on a socket of its own, so a burst of
connections is spread over the workers, and an address that is taken stops start-up at once."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from clerk_sync.cli import main
from clerk_sync.core.settings import Settings
from tests.conftest import MESSAGE_SECRET, WEBHOOK_SECRET, wait_for
from tests.faults import IngressServer

LISTEN = "0A"
"""The TCP state ``LISTEN`` as ``/proc/net/tcp`` writes it."""


def listening_socket_inodes(port: int) -> set[str]:
    """The inodes of the sockets listening on ``port`` (IPv4), from ``/proc/net/tcp``."""
    inodes = set()
    with open("/proc/net/tcp") as table:
        next(table)
        for line in table:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            if local_port == port and fields[3] == LISTEN:
                inodes.add(fields[9])
    return inodes


def socket_inodes_of(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def children_of(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as children:
        return [int(child) for child in children.read().split()]


@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="reads Linux's /proc")
def test_each_worker_listens_on_a_socket_of_its_own(settings: Settings, tmp_path: Path) -> None:
    server = IngressServer(settings, tmp_path / "ingress.log", workers=3, threads=1)
    try:
        # The server answers once its first worker listens; the others boot right after it.
        wait_for(lambda: len(listening_socket_inodes(server.port)) == 3, 30)
        listening = listening_socket_inodes(server.port)
        workers = children_of(server.process.pid)
        owned = [socket_inodes_of(worker) & listening for worker in workers]
        assert len(workers) == 3
        assert [len(sockets) for sockets in owned] == [1, 1, 1], owned
        assert len(set.union(*owned)) == 3, "three sockets, not one shared"
        assert not socket_inodes_of(server.process.pid) & listening, "the master does not accept"
        assert f"Workers listen at: http://127.0.0.1:{server.port}" in server.log()
    finally:
        server.stop()


@pytest.mark.usefixtures("no_server")
def test_a_taken_address_stops_start_up_with_one_line() -> None:
    """Without the check, each worker would fail to bind and gunicorn would restart it for
    ever, serving nothing."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(
            main,
            ["ingress", f"--bind=127.0.0.1:{port}"],
            env={
                "CLERK_WEBHOOK_SECRET": WEBHOOK_SECRET,
                "CLERK_SYNC_MESSAGE_SECRET": MESSAGE_SECRET,
            },
        )
    assert result.exit_code == 1, result.output
    assert result.output == f"Error: cannot listen on 127.0.0.1:{port}: Address already in use\n"
